"""train-quality-classifier: trains here from local data, publishes held-out figures."""

import csv
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.classifiers import TrainClassifierConfig, train_classifier_flow
from lm.data.fasttext_format import model_labels
from lm.data.harmful import classify_toxic, harmful_score
from lm.data.quality import classify_quality


def test_default_quality_model_passes_cs336_cases(reference, tmp_path, prefect_harness):
    model = train_classifier_flow(config=TrainClassifierConfig(kind="quality", root=str(tmp_path)))
    fx = reference / "assignment4-data/fixtures"
    assert classify_quality((fx / "high_quality_wiki_reference.txt").read_text(), model)[0] == "wiki"
    assert classify_quality((fx / "low_quality_cc.txt").read_text(), model)[0] == "cc"
    report = json.loads((tmp_path / "classifiers" / "quality").glob("*/metrics.json").__next__().read_text())
    assert report["num_test"] > 0 and report["metrics"]["auc"] >= 0.9
    assert set(report["metrics"]["wiki"]) == {"precision", "recall", "f1", "support"}
    # Same config again: the trained model is reused, not retrained.
    assert train_classifier_flow(config=TrainClassifierConfig(kind="quality", root=str(tmp_path))) == model


def test_toxic_from_labelled_csv(tmp_path, prefect_harness):
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(40):
            w.writerow([f"thank you for the helpful edit number {i}", "non-toxic"])
            w.writerow([f"you are a stupid idiot and a moron {i}", "toxic"])
    config = TrainClassifierConfig(kind="toxic", data=[str(path)], root=str(tmp_path), epoch=20, export_layout="dolma")
    model = train_classifier_flow(config=config)
    assert classify_toxic("what a stupid idiot", model)[0] == "toxic"
    assert classify_toxic("thank you for the edit", model)[0] == "non-toxic"
    # Dolma's Jigsaw layout has our labels: the export is the same model under the same names.
    exported = Path(model).with_name("model-dolma.bin")
    assert sorted(model_labels(exported)) == ["non-toxic", "toxic"]
    assert harmful_score("toxic", "what a stupid idiot", exported) == harmful_score(
        "toxic", "what a stupid idiot", model
    )


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"holdout": 0.95}, "holdout"),
        ({"kind": "spam"}, "kind"),
        ({"data": ["/no/file.csv"]}, "data"),
        ({"lr": 0}, "lr"),
        ({"kind": "quality", "export_layout": "dolma"}, "export_layout"),
    ],
)
def test_bad_config(bad, field):
    with pytest.raises(ValidationError) as e:
        TrainClassifierConfig.model_validate(bad)
    assert field in str(e.value)
