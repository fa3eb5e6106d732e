"""Standard fastText layouts in and out: Dolma's Jigsaw labels, DCLM's hq/cc, any __label__ model.

Each layout is a small real fastText model trained here on real text (Python reference
paragraphs against Kaggle-style comments), so the label handling is what a downloaded
Dolma or DCLM ``.bin`` would meet."""

import pytest

from lm.data.classifier import (
    evaluate_scores,
    load_classifier,
    positive_labels,
    positive_scores,
    roc_auc,
    train_classifier,
)
from lm.data.classifier_data import reference_texts
from lm.data.fasttext_format import model_labels, relabel_model
from lm.data.harmful import classify_nsfw, harmful_score
from lm.data.quality import quality_score

INSULTS = ["you are a stupid idiot", "shut up you moron", "what a pathetic loser you are", "go away you dumb troll"]


def _examples(pos: str, neg: str) -> list[tuple[str, str]]:
    prose = [p for t in reference_texts() for p in t.splitlines()][:60]
    return [(p, neg) for p in prose] + [(f"{INSULTS[i % 4]} number {i}", pos) for i in range(60)]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    d = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, pos, neg in [
        ("dolma_nsfw", "nsfw", "non-nsfw"),
        ("dolma_toxic", "toxic", "non-toxic"),
        ("dclm", "hq", "cc"),
        ("custom", "bad", "good"),
    ]:
        # DCLM's positive class is the reference-like one: swap the roles for it.
        ex = _examples(neg, pos) if name == "dclm" else _examples(pos, neg)
        train_classifier(ex, d / f"{name}.bin", holdout=0.0, seed=0, epoch=10, lr=0.5, minn=3, maxn=5, dim=16)
        out[name] = d / f"{name}.bin"
    return out


def test_labels_read_from_the_file(layouts):
    assert sorted(model_labels(layouts["dolma_nsfw"])) == ["non-nsfw", "nsfw"]
    assert sorted(model_labels(layouts["dclm"])) == ["cc", "hq"]
    assert sorted(model_labels(layouts["custom"])) == ["bad", "good"]


def test_known_layouts_need_no_config(layouts):
    assert harmful_score("nsfw", "shut up you moron", layouts["dolma_nsfw"]) > 0.5
    assert harmful_score("toxic", "shut up you moron", layouts["dolma_toxic"]) > 0.5
    assert (
        harmful_score("toxic", "The import statement binds names in the local namespace.", layouts["dolma_toxic"]) < 0.5
    )
    assert classify_nsfw("shut up you moron", layouts["dolma_nsfw"])[0] == "nsfw"
    # DCLM: P(hq) is the quality score.
    assert quality_score("you are a stupid idiot", layouts["dclm"]) < 0.5
    assert (
        quality_score("A module can contain executable statements as well as function definitions.", layouts["dclm"])
        > 0.5
    )


def test_any_label_model_by_config(layouts):
    with pytest.raises(ValueError, match=r"labels \['(bad|good)', '(bad|good)'\] include none of \['toxic'\]"):
        harmful_score("toxic", "shut up", layouts["custom"])
    assert harmful_score("toxic", "shut up you moron", layouts["custom"], positive=["bad"]) > 0.5
    assert harmful_score("toxic", "shut up you moron", layouts["custom"], positive=["good"]) < 0.5
    with pytest.raises(ValueError, match=r"\['nasty'\] are not labels"):
        harmful_score("toxic", "x", layouts["custom"], positive=["nasty"])
    with pytest.raises(ValueError, match="every label"):
        harmful_score("toxic", "x", layouts["custom"], positive=["bad", "good"])


def test_relabel_keeps_probabilities(layouts, tmp_path):
    texts = INSULTS + ["Names listed in a global statement must not be defined as formal parameters."]
    src = load_classifier(layouts["custom"])
    out = relabel_model(layouts["custom"], tmp_path / "relabelled.bin", {"bad": "toxic", "good": "non-toxic"})
    assert sorted(model_labels(out)) == ["non-toxic", "toxic"]
    new = load_classifier(out)
    assert positive_scores(new, texts, {"toxic"}) == positive_scores(src, texts, {"bad"})
    assert positive_labels(new, "toxic") == {"toxic"}
    with pytest.raises(ValueError, match="not in"):
        relabel_model(layouts["custom"], tmp_path / "x.bin", {"nice": "x"})
    with pytest.raises(ValueError, match="duplicate"):
        relabel_model(layouts["custom"], tmp_path / "x.bin", {"bad": "good"})


def test_export_ours_as_dclm(layouts, tmp_path):
    ours = tmp_path / "ours.bin"
    train_classifier(_examples("cc", "wiki"), ours, holdout=0.0, seed=0, epoch=10, lr=0.5, dim=16)
    dclm = relabel_model(ours, tmp_path / "dclm.bin", {"wiki": "hq"})
    text = "The with statement is used to wrap the execution of a block with methods defined by a context manager."
    assert sorted(model_labels(dclm)) == ["cc", "hq"]
    assert quality_score(text, dclm) == quality_score(text, ours) > 0.5


def test_not_a_model(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="not a fastText model"):
        model_labels(junk)
    with pytest.raises(FileNotFoundError):
        model_labels(tmp_path / "missing.bin")


def test_evaluate_scores_exact():
    scores = [0.9, 0.8, 0.4, 0.7, 0.2, 0.1]
    gold = [True, True, True, False, False, False]
    m = evaluate_scores(scores, gold, 0.5, ("toxic", "non-toxic"))
    assert m["confusion"] == {
        "gold toxic": {"toxic": 2, "non-toxic": 1},
        "gold non-toxic": {"toxic": 1, "non-toxic": 2},
    }
    assert m["toxic"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    assert m["auc"] == round(8 / 9, 4)  # 8 of the 9 (positive, negative) pairs are ordered right
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5 and roc_auc([0.1], [True]) is None


def test_funnel_config_checks_labels(layouts):
    from pydantic import ValidationError

    from lm.data.filters.harmful import HarmfulConfig
    from lm.data.filters.quality import QualityConfig

    HarmfulConfig(nsfw_model_path=str(layouts["dolma_nsfw"]), toxic_model_path=str(layouts["dolma_toxic"]))
    QualityConfig(model_path=str(layouts["dclm"]))
    with pytest.raises(ValidationError, match=r"toxic_model_path[\s\S]*include none of \['toxic'\]"):
        HarmfulConfig(toxic_model_path=str(layouts["custom"]))
    with pytest.raises(ValidationError, match=r"include none of \['wiki', 'hq'\]"):
        QualityConfig(model_path=str(layouts["dolma_nsfw"]))
