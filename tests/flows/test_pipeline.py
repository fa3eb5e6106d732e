"""The pipeline flow on the smallest config: stages as subflows, reuse by fingerprint, lineage."""

from __future__ import annotations

import json

import pytest

from flows.pipeline import PipelineConfig, StageSpec, lineage, pipeline_flow, plan
from lm.data.shards import read_manifest
from tests.e2e.helpers import data_config


def smallest(root, reference, **kw) -> PipelineConfig:
    """Every stage at its smallest: 46 crawl documents, 300 tokens, a 1-layer model, 4 steps."""
    stages = {
        "data": {"sources": [str(reference / "commoncrawl" / "*.warc.gz")], "max_workers": 1},
        "tokenizer": {"vocab_size": 300},
        "tokenize": {"val_fraction": 0.2, "num_threads": 1},
        "pretrain": {
            "retries": 0, "timeout_s": 300, "sample_prompts": ["The "], "sample_tokens": 4,
            "train": {"model": {"context_length": 16, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64},
                      "batch_size": 4, "max_steps": 4, "eval_interval": 2, "eval_batches": 1,
                      "checkpoint_interval": 4, "log_interval": 1, "device": "cpu"},
        },
    }
    return PipelineConfig(root=str(root), stages=stages, **kw)


def artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(limit=1, sort=ArtifactSort.CREATED_DESC, artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[0]


def test_pipeline_runs_stages_and_reuses_them_by_fingerprint(prefect_harness, reference, tmp_path):
    cfg = smallest(tmp_path, reference)
    out = pipeline_flow(config=cfg)
    first = json.loads(open(out).read())
    rows = first["lineage"]
    ran = {s["stage"]: s["manifest"] for s in first["stages"]}
    assert list(ran) == ["data", "tokenizer", "tokenize", "pretrain"]
    final = {name: read_manifest(p) for name, p in ran.items()}
    # Each stage read the manifest of the one before: the lineage is the chain.
    assert final["tokenize"]["vocab_size"] == 300
    assert [i["fingerprint"] for i in final["tokenizer"]["inputs"]] == [final["data"]["fingerprint"]]
    assert {i["fingerprint"] for i in final["pretrain"]["inputs"]} >= {final["tokenize"]["fingerprint"]}
    assert [r["stage"] for r in rows] == ["extract", "tokenizer", "tokenize", "pretrain"]
    assert [r["fingerprint"] for r in rows] == [final[s]["fingerprint"] for s in ("data", "tokenizer", "tokenize", "pretrain")]
    assert {r["status"] for r in rows} == {"ran"}
    assert rows[0]["in"] == 88 and rows[0]["kept"] == 46  # the reference WARCs: 46 HTML pages
    assert all(r["directory"].startswith(str(tmp_path)) for r in rows)
    assert list((tmp_path / "pipeline").glob("*/lineage.png"))
    md = artifact("pipeline-summary").data
    assert all(r["fingerprint"] in md for r in rows) and "data:image/png;base64," in md

    # Same config again: every stage finds its manifest, nothing is recomputed.
    again = json.loads(open(pipeline_flow(config=cfg)).read())
    assert [r["fingerprint"] for r in again["lineage"]] == [r["fingerprint"] for r in rows]
    assert {r["status"] for r in again["lineage"]} == {"reused"}

    # Start from tokenize with the upstream manifests given: only tokenize and pretrain run,
    # on the same inputs, so they too are reused; a changed pretrain config re-runs pretrain only.
    late = smallest(tmp_path, reference, start_from="tokenize",
                    manifests={"data": ran["data"], "tokenizer": ran["tokenizer"]})
    late.stages["pretrain"]["train"]["max_steps"] = 5
    third = json.loads(open(pipeline_flow(config=late)).read())
    assert [s["stage"] for s in third["stages"]] == ["tokenize", "pretrain"]
    status = {r["stage"]: r["status"] for r in third["lineage"]}
    assert status == {"extract": "reused", "tokenizer": "reused", "tokenize": "reused", "pretrain": "ran"}


def test_bad_stage_config_fails_before_any_work(prefect_harness, reference, tmp_path):
    cfg = PipelineConfig(root=str(tmp_path), stages={"data": {**data_config(tmp_path, reference), "no_such_field": 1}})
    with pytest.raises(ValueError, match="no_such_field"):
        pipeline_flow(config=cfg)
    assert not any(tmp_path.iterdir()), "a stage ran although the config was invalid"


def test_config_names_unknown_stages():
    with pytest.raises(ValueError, match="unknown stage"):
        PipelineConfig(start_from="tokenizr")
    with pytest.raises(ValueError, match="unknown stage"):
        PipelineConfig(stages={"dat": {}})


STAGES = [StageSpec("a"), StageSpec("b", {"input_manifest": "a"}), StageSpec("s", {"input_manifest": "b"}, optional=True), StageSpec("c", {"x": "a", "y": "b"})]


def test_plan_starts_late_only_with_upstream_manifests(tmp_path, reference):
    cfg = PipelineConfig.model_construct(start_from="b", stop_after=None, manifests={}, optional_stages=[], stages={}, root="x")
    with pytest.raises(ValueError, match=r"manifests\.a="):
        plan(cfg, STAGES)
    cfg = PipelineConfig.model_construct(start_from="b", stop_after=None, manifests={"a": str(tmp_path / "nope")}, optional_stages=[], stages={}, root="x")
    with pytest.raises(FileNotFoundError):
        plan(cfg, STAGES)


def test_plan_skips_optional_stages_unless_asked():
    base = dict(start_from=None, stop_after=None, manifests={}, stages={}, root="x")
    assert [s.name for s in plan(PipelineConfig.model_construct(optional_stages=[], **base), STAGES)] == ["a", "b", "c"]
    assert [s.name for s in plan(PipelineConfig.model_construct(optional_stages=["s"], **base), STAGES)] == ["a", "b", "s", "c"]
    stop = {**base, "stop_after": "b"}
    assert [s.name for s in plan(PipelineConfig.model_construct(optional_stages=["s"], **stop), STAGES)] == ["a", "b"]


def test_lineage_of_a_missing_manifest_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no stage manifest"):
        lineage({"data": str(tmp_path / "x" / "_manifest.json")}, "2026-01-01T00:00:00+00:00")
