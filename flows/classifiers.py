"""``train-quality-classifier``: train a fastText classifier (quality, nsfw or toxic) and
publish its held-out precision / recall / F1.

With no ``data`` it trains the built-in default for ``kind`` from data on this machine
(see ``lm/data/classifier_data.py`` for exactly what); with ``data`` it trains on labelled
CSV/Parquet files (columns ``text``, ``label``). The model goes to
``<root>/classifiers/<kind>/<fingerprint>/model.bin`` with ``metrics.json`` beside it;
``install_as_default`` also makes it the model ``classify_<kind>()`` uses without a path.

    lmpipe run train-quality-classifier
    lmpipe run train-quality-classifier --set kind=toxic --set 'data=[my_labels.csv]'
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field, field_validator

from lm.config import Config
from lm.data.shards import atomic_write_json, fingerprint, source_fingerprint
from lm.data.storage import check_local_root
from tasks.artifacts import artifact_key, markdown_table


class TrainClassifierConfig(Config):
    kind: Literal["quality", "nsfw", "toxic"] = Field("quality", description="which classifier: quality (wiki/cc), nsfw or toxic")
    data: list[str] = Field(default_factory=list, max_length=10_000, description="labelled CSV/Parquet files (text,label); empty = the built-in data for this kind")
    crawl_paths: list[str] = Field(default_factory=list, max_length=10_000, description="WARC/WET files for the built-in data's crawl examples; empty = the Common Crawl samples in shared/reference")
    root: str = Field("outputs", description="artifact root; the model goes to `<root>/classifiers/<kind>/<fingerprint>/`")
    holdout: float = Field(0.2, gt=0.0, lt=0.9, description="fraction of each label held out for evaluation")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the split and of fastText")
    epoch: int | None = Field(None, ge=1, le=500, description="training epochs; empty = the kind's default")
    lr: float | None = Field(None, gt=0.0, le=2.0, description="learning rate; empty = the kind's default")
    word_ngrams: int | None = Field(None, ge=1, le=5, description="word n-gram length; empty = the kind's default")
    install_as_default: bool = Field(False, description="also copy the model to the cache as the default model for this kind")

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "train-quality-classifier")  # URL roots: see docs/storage.md

    @field_validator("data", "crawl_paths")
    @classmethod
    def _files_exist(cls, paths: list[str]) -> list[str]:
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise ValueError(f"files do not exist: {missing}")
        return paths


def _options(config: TrainClassifierConfig) -> dict:
    options = {"epoch": 50, "lr": 0.5, "word_ngrams": 1} if config.kind != "quality" else {}
    for key in ("epoch", "lr", "word_ngrams"):
        if getattr(config, key) is not None:
            options[key] = getattr(config, key)
    return options


@task(name="train-classifier", retries=1)
def train(config: TrainClassifierConfig) -> dict:
    from lm.data.classifier import train_classifier
    from lm.data.classifier_data import default_examples, read_labeled

    fp = fingerprint(f"classifier-{config.kind}", "1", config.model_dump(exclude={"root", "install_as_default"}),
                     [source_fingerprint(p) for p in config.data + config.crawl_paths])
    out = Path(config.root) / "classifiers" / config.kind / fp
    metrics_path = out / "metrics.json"
    if metrics_path.exists() and (out / "model.bin").exists():
        import json

        return json.loads(metrics_path.read_text())
    if config.data:
        examples = [ex for path in config.data for ex in read_labeled(path)]
        source = ", ".join(config.data)
    else:
        examples = default_examples(config.kind, config.crawl_paths or None)
        source = f"built-in {config.kind} data (lm/data/classifier_data.py)"
    result = train_classifier(examples, out / "model.bin", holdout=config.holdout, seed=config.seed, **_options(config))
    report = {
        "kind": config.kind, "model_path": result.model_path, "data": source, "labels": result.labels,
        "num_train": result.num_train, "num_test": result.num_test, "metrics": result.metrics,
    }
    atomic_write_json(metrics_path, report)
    return report


@flow(name="train-quality-classifier", log_prints=True)
def train_classifier_flow(config: TrainClassifierConfig) -> str:
    """Train, evaluate on the held-out split, publish the figures; returns the model path."""
    report = train(config)
    rows = [{"label": k, **v} for k, v in report["metrics"].items() if isinstance(v, dict)]
    create_table_artifact(table=rows, key=artifact_key("classifier", config.kind, "metrics"),
                          description=f"{config.kind} classifier: held-out precision / recall / F1")
    md = [
        f"# {config.kind} classifier",
        f"Model `{report['model_path']}`  ",
        f"Trained on: {report['data']}  ",
        f"{report['num_train']} training / {report['num_test']} held-out examples; "
        f"held-out accuracy **{report['metrics'].get('accuracy')}**",
        "",
        markdown_table(rows),
    ]
    create_markdown_artifact(markdown="\n".join(md), key=artifact_key("classifier", config.kind, "summary"),
                             description=f"{config.kind} classifier: data and held-out figures")
    if config.install_as_default:
        from lm.data.quality import default_model_path

        target = default_model_path(config.kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report["model_path"], target)
        print(f"installed as the default {config.kind} model: {target}")
    print(f"{config.kind} classifier: accuracy {report['metrics'].get('accuracy')} -> {report['model_path']}")
    return report["model_path"]
