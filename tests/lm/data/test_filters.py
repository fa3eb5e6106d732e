"""The datatrove-style filter classes: (keep, reason), annotations, PII counts."""

import pytest

from lm.data.classifier import train_classifier
from lm.data.filters import (BadWordsFilter, C4QualityFilter, GopherQualityFilter, HarmfulContentFilter, LanguageFilter,
                             PIIFormatter, QualityClassifierFilter, apply_filters, build_stage_filters)


def test_language_filter_annotates(reference):
    moby = (reference / "assignment4-data/fixtures/moby_extracted.txt").read_text()
    doc = {"text": moby}
    assert LanguageFilter(["en"], 0.5).filter(doc) == (True, None)
    assert doc["language"] == "en" and doc["language_score"] > 0.5
    assert LanguageFilter(["de"], 0.5).filter({"text": moby}) == (False, "language_not_kept")
    assert LanguageFilter([], 0.999999).filter({"text": moby}) == (False, "language_low_score")


def test_pipeline_order_counts_and_reasons(reference):
    wiki = (reference / "assignment4-data/fixtures/high_quality_wiki_reference.txt").read_text()[:4000]
    # C4's word list is blunt: this philosophy article mentions "domination", an LDNOOBW entry.
    assert apply_filters([BadWordsFilter()], {"text": wiki})[:2] == (False, "c4_bad_word")
    filters = [PIIFormatter(), GopherQualityFilter(), C4QualityFilter(min_sentences=3)]
    doc = {"text": wiki + "\nWrite to me at someone@example.org or 283-182-3829 today."}
    keep, reason, counts = apply_filters(filters, doc)
    assert (keep, reason) == (True, None)
    assert counts == {"emails_masked": 1, "phone_numbers_masked": 1, "ips_masked": 0}
    assert "|||EMAIL_ADDRESS|||" in doc["text"]
    assert apply_filters(filters, {"text": None}) == (False, "no_text", {})
    assert apply_filters(filters, {"text": "short"})[:2] == (False, "gopher_too_few_words")


def test_classifier_filters_with_user_models(tmp_path):
    rows = [("a calm and pleasant afternoon walk", "non-toxic")] * 20 + [("you worthless idiot moron", "toxic")] * 20
    train_classifier(rows, tmp_path / "toxic.bin", epoch=10)
    f = HarmfulContentFilter("toxic", str(tmp_path / "toxic.bin"), max_score=0.5)
    doc = {"text": "you worthless idiot"}
    assert f.filter(doc) == (False, "toxic") and doc["toxic_score"] >= 0.5
    assert f.filter({"text": "a pleasant afternoon"}) == (True, None)
    wiki_rows = [("the theory holds that liberty matters", "wiki")] * 20 + [("login register menu home", "cc")] * 20
    train_classifier(wiki_rows, tmp_path / "q.bin", epoch=10)
    q = QualityClassifierFilter(str(tmp_path / "q.bin"), min_score=0.5)
    assert q.filter({"text": "login menu register"}) == (False, "quality_low")
    with pytest.raises(ValueError, match="nsfw"):
        HarmfulContentFilter("spam")


def test_build_stage_filters():
    rules = build_stage_filters("rules", {"gopher": True, "gopher_thresholds": {}, "c4": False, "c4_options": {},
                                          "bad_words": True, "bad_words_language": "en"})
    assert [type(f).__name__ for f in rules] == ["GopherQualityFilter", "BadWordsFilter"]
    with pytest.raises(ValueError, match="unknown filter stage"):
        build_stage_filters("nope", {})
