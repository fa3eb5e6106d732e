"""The pipeline flow on the smallest config: stages as subflows, reuse by fingerprint, lineage."""

from __future__ import annotations

import json

import pytest

from flows.pipeline import PipelineConfig, StageSpec, lineage, pipeline_flow, plan
from lm.data.shards import read_manifest
from tests.e2e.helpers import data_config


def smallest(root, reference, **kw) -> PipelineConfig:
    return PipelineConfig(root=str(root), stages={"data": data_config(root, reference)}, **kw)


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
    assert set(first["stages"]) == {"data"}
    final = read_manifest(first["stages"]["data"])
    # The lineage ends with the data stage's output and walks back through its inputs.
    assert rows[-1]["fingerprint"] == final["fingerprint"] and rows[-1]["stage"] == final["stage"]
    assert {r["status"] for r in rows} == {"ran"}
    assert all(r["directory"].startswith(str(tmp_path)) for r in rows)
    assert (tmp_path / "pipeline").is_dir() and list((tmp_path / "pipeline").glob("*/lineage.png"))
    md = artifact("pipeline-summary").data
    assert final["fingerprint"] in md and "data:image/png;base64," in md

    # Same config again: every stage finds its manifest, nothing is recomputed.
    again = json.loads(open(pipeline_flow(config=cfg)).read())
    assert [r["fingerprint"] for r in again["lineage"]] == [r["fingerprint"] for r in rows]
    assert {r["status"] for r in again["lineage"]} == {"reused"}


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
