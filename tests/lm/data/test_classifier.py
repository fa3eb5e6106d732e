"""Classifiers: the default models trained here, user models by path, bad model paths."""

import csv

import pytest

from lm.data.classifier import TrainResult, check_fasttext_file, load_classifier, train_classifier
from lm.data.classifier_data import read_labeled
from lm.data.harmful import classify_nsfw, classify_toxic
from lm.data.quality import classify_quality


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory):
    """The default quality model, trained in a fresh interpreter.

    In about one full-suite run in three, the same training in the long-lived pytest process
    gave a different model (held-out accuracy 0.84-0.96 instead of 0.986); alone it is
    bit-identical every time. Until that state leak is found, train where nothing leaks in."""
    import dataclasses
    import json
    import subprocess
    import sys

    path = tmp_path_factory.mktemp("models") / "quality.bin"
    code = (
        "import dataclasses, json, sys\n"
        "from lm.data.classifier_data import train_default_model\n"
        "print(json.dumps(dataclasses.asdict(train_default_model('quality', sys.argv[1]))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    result = TrainResult(**json.loads(proc.stdout.strip().splitlines()[-1]))
    assert dataclasses.is_dataclass(result)
    return path, result


def test_quality_reference_cases(reference, quality_model):
    path, result = quality_model
    fx = reference / "assignment4-data/fixtures"
    label, score = classify_quality((fx / "high_quality_wiki_reference.txt").read_text(), path)
    assert label == "wiki" and score > 0
    label, score = classify_quality((fx / "low_quality_cc.txt").read_text(), path)
    assert label == "cc" and score > 0


def test_quality_holdout_metrics(quality_model):
    _, result = quality_model
    assert result.num_test > 0
    assert set(result.metrics) == {"wiki", "cc", "accuracy"}
    assert result.metrics["accuracy"] >= 0.9
    for label in ("wiki", "cc"):
        assert 0.8 <= result.metrics[label]["f1"] <= 1.0


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
