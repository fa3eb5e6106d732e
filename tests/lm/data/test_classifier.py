"""Classifiers: the default models trained here, user models by path, bad model paths."""

import csv

import pytest

from lm.data.classifier import check_fasttext_file, load_classifier, train_classifier
from lm.data.classifier_data import read_labeled
from lm.data.default_classifiers import train_default_model
from lm.data.harmful import classify_nsfw, classify_toxic
from lm.data.quality import classify_quality


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory):
    """The default quality model (train_classifier trains in a fresh interpreter, so the
    state of this long-lived process cannot change it: see test_training_ignores_process_state)."""
    path = tmp_path_factory.mktemp("models") / "quality.bin"
    return path, train_default_model("quality", path)


def test_quality_reference_cases(reference, quality_model):
    path, result = quality_model
    fx = reference / "assignment4-data/fixtures"
    label, score = classify_quality((fx / "high_quality_wiki_reference.txt").read_text(), path)
    assert label == "wiki" and score > 0
    label, score = classify_quality((fx / "low_quality_cc.txt").read_text(), path)
    assert label == "cc" and score > 0


def test_quality_holdout_metrics(quality_model):
    """Figures on the held-out set (other sources than training: Wikipedia sections, CS336's page, pywb's pages,
    comments, spam, boilerplate and made pages)."""
    _, result = quality_model
    assert result.num_test > 0
    assert set(result.metrics) == {"wiki", "cc", "accuracy", "auc", "threshold", "confusion"}
    assert result.metrics["auc"] >= 0.9
    confusion = result.metrics["confusion"]
    assert sum(confusion["gold wiki"].values()) == result.metrics["wiki"]["support"]
    assert result.metrics["cc"]["recall"] >= 0.8


def test_user_model_from_csv(tmp_path, reference):
    rows = [("what a lovely sunny day in the park", "nice")] * 30 + [("you stupid idiot, shut up moron", "mean")] * 30
    with open(tmp_path / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    examples = read_labeled(tmp_path / "data.csv")
    assert len(examples) == 60
    result = train_classifier(examples, tmp_path / "m.bin", holdout=0.2, seed=0)
    assert result.metrics["accuracy"] == 1.0
    # Any fastText model loads by path in the harmful classifiers (labels are the model's own).
    assert classify_toxic("shut up you idiot moron", tmp_path / "m.bin")[0] == "mean"
    assert classify_nsfw("a lovely sunny day", tmp_path / "m.bin")[0] == "nice"


def test_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        classify_quality("text", tmp_path / "missing.bin")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a fasttext model at all")
    with pytest.raises(ValueError, match="not a fastText model"):
        load_classifier(junk)
    with pytest.raises(ValueError, match="not a fastText model"):
        check_fasttext_file(junk)


def test_labeled_data_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("content,label\nhello,x\n")
    with pytest.raises(ValueError, match="text"):
        read_labeled(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError):
        read_labeled(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="two labels"):
        train_classifier([("a b c", "x")] * 5, tmp_path / "m.bin")


def test_empty_and_huge_text(quality_model):
    path, _ = quality_model
    label, score = classify_quality("", path)
    assert label in {"wiki", "cc"} and 0 <= score <= 1
    label, _ = classify_quality("Menu " * 500_000, path)  # one 2.5 MB line
    assert label == "cc"


def test_training_ignores_process_state(tmp_path):
    """The same data gives the same model bytes even when this process's floating-point
    environment is disturbed: rounding mode upward (which changes fastText's result when it
    trains in the calling thread), flush-to-zero / denormals-are-zero, and a heap full of
    freed garbage."""
    import ctypes
    import ctypes.util

    import numpy as np
    import torch

    rows = [(f"the quiet river runs past the old mill number {i}", "calm") for i in range(40)]
    rows += [(f"shouting crowds and sirens fill street {i} tonight", "loud") for i in range(40)]
    reference = train_classifier(rows, tmp_path / "ref.bin", seed=3, epoch=10)
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    blocks = [libc.malloc(1 << 22) for _ in range(8)]
    for p in blocks:
        ctypes.memset(p, 0x7F, 1 << 22)
        libc.free(ctypes.c_void_p(p))
    FE_UPWARD, FE_TONEAREST = 0x800, 0
    assert libm.fesetround(FE_UPWARD) == 0
    torch.set_flush_denormal(True)
    try:
        # the perturbation is in effect in this thread: 1/3 rounds up, denormals flush to zero
        assert np.float64(1) / np.float64(3) > 0.3333333333333333  # the nearest double to 1/3
        assert np.float32(1e-40) * np.float32(1) == 0
        disturbed = train_classifier(rows, tmp_path / "disturbed.bin", seed=3, epoch=10)
    finally:
        libm.fesetround(FE_TONEAREST)
        torch.set_flush_denormal(False)
    assert (tmp_path / "disturbed.bin").read_bytes() == (tmp_path / "ref.bin").read_bytes()
    assert disturbed.metrics == reference.metrics and disturbed.data_sha256 == reference.data_sha256 != ""
