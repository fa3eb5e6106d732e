"""``train-quality-classifier``: train a fastText classifier (quality, nsfw or toxic) and
publish its held-out precision / recall / F1.

With no ``data`` it trains the built-in default for ``kind`` (see
``lm/data/default_classifiers.py`` for exactly what) and evaluates it on the held-out set
from other sources; with ``data`` it trains on labelled CSV/Parquet files (columns
``text``, ``label``) and holds out ``holdout`` of them. The model goes to
``<root>/classifiers/<kind>/<fingerprint>/model.bin`` with ``metrics.json`` beside it, and
``export_layout`` also writes ``model-<layout>.bin`` with the labels of that layout (DCLM's
``hq``/``cc`` for quality; Dolma's Jigsaw labels for nsfw/toxic, which are ours);
``install_as_default`` also makes it the model ``classify_<kind>()`` uses without a path.

    lmpipe run train-quality-classifier
    lmpipe run train-quality-classifier --set kind=toxic --set 'data=[my_labels.csv]'
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field, field_validator, model_validator

from lm.config import Config
from lm.data.classifier import LAYOUTS, train_classifier
from lm.data.classifier_data import read_labeled
from lm.data.default_classifiers import DEFAULT_MODEL_VERSION, OPTIONS, default_model_path, train_default_model
from lm.data.fasttext_format import relabel_model
from lm.data.shards import atomic_write_json, fingerprint, source_fingerprint
from lm.data.storage import check_local_root
from tasks.artifacts import artifact_key, markdown_table


class TrainClassifierConfig(Config):
    kind: Literal["quality", "nsfw", "toxic"] = Field(
        "quality", description="which classifier: quality (wiki/cc), nsfw or toxic"
    )
    data: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="labelled CSV/Parquet files (text,label); empty = the built-in data for this kind",
    )
    crawl_paths: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description=(
            "WARC/WET files for the built-in data's crawl examples; "
            "empty = the Common Crawl samples in shared/reference"
        ),
    )
    root: str = Field(
        "outputs", description="artifact root; the model goes to `<root>/classifiers/<kind>/<fingerprint>/`"
    )
    holdout: float = Field(0.2, gt=0.0, lt=0.9, description="fraction of each label held out for evaluation")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the split and of fastText")
    epoch: int | None = Field(None, ge=1, le=500, description="training epochs; empty = the kind's default")
    lr: float | None = Field(None, gt=0.0, le=2.0, description="learning rate; empty = the kind's default")
    word_ngrams: int | None = Field(None, ge=1, le=5, description="word n-gram length; empty = the kind's default")
    install_as_default: bool = Field(
        False, description="also copy the model to the cache as the default model for this kind"
    )
    export_layout: Literal["lmpipe", "dolma", "dclm"] | None = Field(
        None,
        description=(
            "also write `model-<layout>.bin` with that layout's labels (dclm: hq/cc for quality; dolma: nsfw/toxic)"
        ),
    )

    @model_validator(mode="after")
    def _layout_has_kind(self):
        if self.export_layout and self.kind not in LAYOUTS[self.export_layout]:
            raise ValueError(
                f"export_layout {self.export_layout!r} has no {self.kind} model; "
                f"choose one of {[k for k, v in LAYOUTS.items() if self.kind in v]}"
            )
        return self

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


def _overrides(config: TrainClassifierConfig) -> dict:
    return {key: getattr(config, key) for key in ("epoch", "lr", "word_ngrams") if getattr(config, key) is not None}


@task(name="train-classifier", retries=1)
def train(config: TrainClassifierConfig) -> dict:
    version = "2" if config.data else f"2-default{DEFAULT_MODEL_VERSION}"
    fp = fingerprint(
        f"classifier-{config.kind}",
        version,
        config.model_dump(exclude={"root", "install_as_default", "export_layout"}),
        [source_fingerprint(p) for p in config.data + config.crawl_paths],
    )
    out = Path(config.root) / "classifiers" / config.kind / fp
    metrics_path = out / "metrics.json"
    if metrics_path.exists() and (out / "model.bin").exists():
        return json.loads(metrics_path.read_text())
    if config.data:
        examples = [ex for path in config.data for ex in read_labeled(path)]
        options = {**OPTIONS[config.kind], **_overrides(config)}
        result = train_classifier(examples, out / "model.bin", holdout=config.holdout, seed=config.seed, **options)
        source = ", ".join(config.data)
    else:
        result = train_default_model(
            config.kind, out / "model.bin", config.crawl_paths or None, seed=config.seed, **_overrides(config)
        )
        source = f"built-in {config.kind} data (lm/data/default_classifiers.py); figures on its held-out set"
    report = {
        "kind": config.kind,
        "model_path": result.model_path,
        "data": source,
        "labels": result.labels,
        "num_train": result.num_train,
        "num_test": result.num_test,
        "metrics": result.metrics,
    }
    atomic_write_json(metrics_path, report)
    return report


def export(model_path: str, kind: str, layout: str) -> Path:
    """``model-<layout>.bin`` beside ``model_path``: our labels renamed to that layout's."""
    ours, theirs = LAYOUTS["lmpipe"][kind], LAYOUTS[layout][kind]
    return relabel_model(model_path, Path(model_path).with_name(f"model-{layout}.bin"), dict(zip(ours, theirs)))


def _rows(metrics: dict) -> list[dict]:
    return [{"label": k, **v} for k, v in metrics.items() if isinstance(v, dict) and "f1" in v]


@flow(name="train-quality-classifier", log_prints=True)
def train_classifier_flow(config: TrainClassifierConfig) -> str:
    """Train, evaluate on the held-out split, publish the figures; returns the model path."""
    report = train(config)
    rows = _rows(report["metrics"])
    create_table_artifact(
        table=rows,
        key=artifact_key("classifier", config.kind, "metrics"),
        description=f"{config.kind} classifier: held-out precision / recall / F1",
    )
    md = [
        f"# {config.kind} classifier",
        f"Model `{report['model_path']}`  ",
        f"Trained on: {report['data']}  ",
        (
            f"{report['num_train']} training / {report['num_test']} held-out examples; "
            f"held-out accuracy **{report['metrics'].get('accuracy')}**, AUC {report['metrics'].get('auc')}"
        ),
        "",
        markdown_table(rows),
    ]
    create_markdown_artifact(
        markdown="\n".join(md),
        key=artifact_key("classifier", config.kind, "summary"),
        description=f"{config.kind} classifier: data and held-out figures",
    )
    if config.export_layout:
        print(
            f"exported in the {config.export_layout} layout: "
            f"{export(report['model_path'], config.kind, config.export_layout)}"
        )
    if config.install_as_default:
        target = default_model_path(config.kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report["model_path"], target)
        print(f"installed as the default {config.kind} model: {target}")
    print(f"{config.kind} classifier: accuracy {report['metrics'].get('accuracy')} -> {report['model_path']}")
    return report["model_path"]
