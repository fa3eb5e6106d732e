"""The pipeline flow on the smallest config: stages as subflows, reuse by fingerprint, lineage."""

from __future__ import annotations

import json

import pytest

from flows.pipeline import PipelineConfig, StageSpec, lineage, pipeline_flow, plan
from lm.data.shards import read_manifest
from tests.e2e.helpers import LEAN_FILTERS, data_config


ALIGN_SMALL = {"data": {"num_train": 32, "num_eval": 8}, "options": {"num_samples": 4, "max_new_tokens": 4, "num_threads": 1}}


def smallest(root, reference, **kw) -> PipelineConfig:
    """Every stage at its smallest: 46 crawl pages, 300 tokens, a 1-layer model, a few steps each."""
    stages = {
        # Only PII masking and dedup: the language, rule and quality filters would leave 1 page.
        "data": {"sources": [str(reference / "commoncrawl" / "*.warc.gz")], "max_workers": 1, "filters": LEAN_FILTERS},
        "tokenizer": {"vocab_size": 300},
        "tokenize": {"val_fraction": 0.2, "num_threads": 1},
        "pretrain": {
            "retries": 0, "timeout_s": 300, "sample_prompts": ["The "], "sample_tokens": 4,
            "train": {"model": {"context_length": 16, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64},
                      "batch_size": 4, "max_steps": 4, "eval_interval": 2, "eval_batches": 1,
                      "checkpoint_interval": 4, "log_interval": 1, "device": "cpu"},
        },
        "sft": {**ALIGN_SMALL, "sft": {"num_steps": 3, "batch_size": 8, "eval_every": 3, "warmup_steps": 0}},
        "dpo": {**ALIGN_SMALL, "dpo": {"num_steps": 3, "batch_size": 8, "eval_every": 3}},
        "grpo": {**ALIGN_SMALL, "grpo": {"num_steps": 2, "num_prompts_per_step": 4, "group_size": 2, "max_new_tokens": 4,
                                         "microbatch_size": 8, "eval_every": 2}},
        "evaluate": {"eval": {"tasks": ["arithmetic"], "arithmetic": {"num_train": 32, "num_eval": 8}, "limit": 8,
                              "max_new_tokens": 4, "num_threads": 1}},
    }
    return PipelineConfig(root=str(root), stages=stages, **kw)


def artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(limit=1, sort=ArtifactSort.CREATED_DESC, artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[0]


CHAIN = ["data", "tokenizer", "tokenize", "pretrain", "sft", "dpo", "grpo", "evaluate"]


@pytest.mark.slow
def test_pipeline_runs_the_chain_and_reuses_stages_by_fingerprint(prefect_harness, reference, tmp_path):
    first = json.loads(open(pipeline_flow(config=smallest(tmp_path, reference))).read())
    rows = first["lineage"]
    ran = {s["stage"]: s["manifest"] for s in first["stages"]}
    assert list(ran) == CHAIN
    final = {name: read_manifest(p) for name, p in ran.items()}
    # Each stage read the manifest of the one before it: the lineage is the chain.
    assert final["tokenize"]["vocab_size"] == 300
    assert final["data"]["stage"] == "minhash"
    assert [i["fingerprint"] for i in final["tokenizer"]["inputs"]] == [final["data"]["fingerprint"]]
    for up, down in [("tokenize", "pretrain"), ("pretrain", "sft"), ("sft", "dpo"), ("dpo", "grpo"), ("grpo", "evaluate")]:
        assert final[up]["fingerprint"] in {i["fingerprint"] for i in final[down]["inputs"]}, (up, down)
    by_fp = {r["fingerprint"]: r for r in rows}
    assert all(by_fp[m["fingerprint"]]["pipeline_stage"] == name for name, m in final.items())
    assert rows[0]["stage"] == "extract" and (rows[0]["in"], rows[0]["kept"]) == (88, 46)  # the reference WARCs: 46 pages
    assert {r["status"] for r in rows} == {"ran"}
    assert all(r["directory"].startswith(str(tmp_path)) for r in rows)
    assert list((tmp_path / "pipeline").glob("*/lineage.png"))
    md = artifact("pipeline-summary").data
    assert all(r["fingerprint"] in md for r in rows) and "data:image/png;base64," in md

    # Start at tokenize from the manifests that exist, with a longer pretraining: tokenize
    # finds its fingerprint (reused, as is everything upstream); pretrain and every stage
    # after it run again, because their input changed.
    late = smallest(tmp_path, reference, start_from="tokenize", manifests={"data": ran["data"], "tokenizer": ran["tokenizer"]})
    late.stages["pretrain"]["train"]["max_steps"] = 5
    second = json.loads(open(pipeline_flow(config=late)).read())
    assert [s["stage"] for s in second["stages"]] == CHAIN[2:]
    status = {r["fingerprint"]: r["status"] for r in second["lineage"]}
    outputs = {s["stage"]: read_manifest(s["manifest"])["fingerprint"] for s in second["stages"]}
    assert status[outputs["tokenize"]] == "reused"
    assert {s: status[outputs[s]] for s in CHAIN[3:]} == {s: "ran" for s in CHAIN[3:]}
    assert {r["status"] for r in second["lineage"] if r["stage"] in ("extract", "minhash", "tokenizer")} == {"reused"}
    # Stages given as manifests keep their own names in the lineage.
    owner = {r["stage"]: r["pipeline_stage"] for r in second["lineage"]}
    assert (owner["extract"], owner["minhash"], owner["tokenizer"]) == ("data", "data", "tokenizer")


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
