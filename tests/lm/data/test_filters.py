"""The filter classes and their registry: (keep, reason), annotations, PII counts, configs."""

import pytest
from pydantic import Field, ValidationError

import lm.data.filters as registry
from lm.data.classifier import train_classifier
from lm.data.filters import (
    Filter,
    FilterConfig,
    HarmfulFilter,
    LanguageFilter,
    PIIFilter,
    QualityFilter,
    RulesFilter,
    filters_config_model,
    register_filter,
)


def _make(cls, **settings):
    return cls(cls.Config(**settings))


def test_language_filter_annotates(reference):
    moby = (reference / "assignment4-data/fixtures/moby_extracted.txt").read_text()
    doc = {"text": moby}
    assert _make(LanguageFilter, languages=["en"], min_score=0.5).keep(doc) == (True, None)
    assert doc["language"] == "en" and doc["language_score"] > 0.5
    assert _make(LanguageFilter, languages=["de"], min_score=0.5).keep({"text": moby}) == (False, "language_not_kept")
    assert _make(LanguageFilter, languages=[], min_score=0.999999).keep({"text": moby}) == (False, "language_low_score")


def test_language_codes_checked_against_the_model():
    with pytest.raises(ValueError, match="'english' is not a language of the model; did you mean 'en'"):
        _make(LanguageFilter, languages=["english"]).check()
    with pytest.raises(ValueError, match="'EN'.*did you mean 'en'"):
        _make(LanguageFilter, languages=["EN"]).check()
    _make(LanguageFilter, languages=["en", "de", "zh"]).check()


def test_rules_and_pii(reference):
    wiki = (reference / "assignment4-data/fixtures/high_quality_wiki_reference.txt").read_text()[:4000]
    # C4's word list is blunt: this philosophy article mentions "domination", an LDNOOBW entry.
    assert _make(RulesFilter).keep({"text": wiki}) == (False, "c4_bad_word")
    rules = _make(RulesFilter, bad_words=False, c4_options={"min_sentences": 3})
    doc = {"text": wiki + "\nWrite to me at someone@example.org or 283-182-3829 today."}
    assert _make(PIIFilter).transform(doc) == {"emails_masked": 1, "phone_numbers_masked": 1, "ips_masked": 0}
    assert "|||EMAIL_ADDRESS|||" in doc["text"]
    assert rules.keep(doc) == (True, None)
    assert rules.keep({"text": "short"}) == (False, "gopher_too_few_words")
    with pytest.raises(ValueError, match="xx"):
        _make(RulesFilter, bad_words_language="xx").check()


def test_classifier_filters_with_user_models(tmp_path):
    rows = [("a calm and pleasant afternoon walk", "non-toxic")] * 20 + [("you worthless idiot moron", "toxic")] * 20
    train_classifier(rows, tmp_path / "toxic.bin", epoch=10)
    f = _make(
        HarmfulFilter,
        enabled=True,
        nsfw=False,
        toxic=True,
        toxic_model_path=str(tmp_path / "toxic.bin"),
        toxic_max_score=0.5,
    )
    doc = {"text": "you worthless idiot"}
    assert f.keep(doc) == (False, "toxic") and doc["toxic_score"] >= 0.5 and "nsfw_score" not in doc
    assert f.keep({"text": "a pleasant afternoon"}) == (True, None)
    assert f.model_files() == {"toxic_model": str(tmp_path / "toxic.bin")}
    wiki_rows = [("the theory holds that liberty matters", "wiki")] * 20 + [("login register menu home", "cc")] * 20
    train_classifier(wiki_rows, tmp_path / "q.bin", epoch=10)
    q = _make(QualityFilter, model_path=str(tmp_path / "q.bin"), min_score=0.5)
    doc = {"text": "login menu register"}
    assert q.keep(doc) == (False, "quality_low") and doc["quality_score"] < 0.5
    # the decision is a threshold on the score column: a lower threshold keeps the same scores
    assert _make(QualityFilter, model_path=str(tmp_path / "q.bin"), min_score=0.0).decide(doc) == (True, None)
    with pytest.raises(ValidationError, match="model_path"):
        QualityFilter.Config(model_path=str(tmp_path / "missing.bin"))


def test_config_model_comes_from_the_registry():
    model = filters_config_model()
    assert list(model.model_fields) == ["langid", "pii", "rules", "quality", "harmful", "materialize_each"]
    assert model.model_fields["langid"].description == LanguageFilter.description
    cfg = model.model_validate({"rules": {"enabled": False}})
    assert [f.name for f in cfg.enabled_filters()] == ["langid", "pii", "quality", "harmful"]
    with pytest.raises(ValidationError, match="langid.min_scor"):
        model.model_validate({"langid": {"min_scor": 0.3}})


def test_registration_checks_the_class(monkeypatch):
    monkeypatch.setattr(registry, "FILTERS", list(registry.FILTERS))

    class NoDescConfig(FilterConfig):
        limit: int = 3

    class Bad(Filter):
        name, Config, description = "bad", NoDescConfig, "x"

        def keep(self, doc):
            return True, None

    with pytest.raises(ValueError, match="need a description"):
        register_filter(Bad)

    class DupConfig(FilterConfig):
        limit: int = Field(3, description="a limit")

    class Dup(Filter):
        name, Config, description = "rules", DupConfig, "x"

        def keep(self, doc):
            return True, None

    with pytest.raises(ValueError, match="already registered"):
        register_filter(Dup)

    class Neither(Filter):
        name, Config, description = "neither", DupConfig, "x"

    with pytest.raises(TypeError, match="exactly one of keep"):
        register_filter(Neither)
    Dup.name = "dup"
    register_filter(Dup, before="quality")
    assert [f.name for f in registry.FILTERS] == ["langid", "pii", "rules", "dup", "quality", "harmful"]
    assert "dup" in filters_config_model().model_fields
