"""The pipeline flow on the smallest config: stages as subflows, reuse by fingerprint, lineage."""

from __future__ import annotations

import json

import pytest

from flows.lineage import lineage
from flows.pipeline import PipelineConfig, StageSpec, pipeline_flow, plan
from lm.data.shards import read_manifest
from tests.e2e.helpers import LEAN_FILTERS, data_config

ALIGN_SMALL = {
    "data": {"num_train": 32, "num_eval": 8},
    "options": {"num_samples": 4, "max_new_tokens": 4, "num_threads": 1},
}


def smallest_stages(reference) -> dict:
    """Every stage at its smallest: 46 crawl pages, 300 tokens, a 1-layer model, a few steps each."""
    return {
        # Only PII masking and dedup: the language, rule and quality filters would leave 1 page.
        "data": {"sources": [str(reference / "commoncrawl" / "*.warc.gz")], "max_workers": 1, "filters": LEAN_FILTERS},
        "tokenizer": {"vocab_size": 300},
        "tokenize": {"val_fraction": 0.2, "num_threads": 1},
        "pretrain": {
            "retries": 0,
            "timeout_s": 300,
            "sample_prompts": ["The "],
            "sample_tokens": 4,
            "train": {
                "model": {"context_length": 16, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64},
                "batch_size": 4,
                "max_steps": 4,
                "eval_interval": 2,
                "eval_batches": 1,
                "checkpoint_interval": 4,
                "log_interval": 1,
                "device": "cpu",
            },
        },
        "sft": {**ALIGN_SMALL, "sft": {"num_steps": 3, "batch_size": 8, "eval_every": 3, "warmup_steps": 0}},
        "dpo": {**ALIGN_SMALL, "dpo": {"num_steps": 3, "batch_size": 8, "eval_every": 3}},
        "grpo": {
            **ALIGN_SMALL,
            "grpo": {
                "num_steps": 2,
                "num_prompts_per_step": 4,
                "group_size": 2,
                "max_new_tokens": 4,
                "microbatch_size": 8,
                "eval_every": 2,
            },
        },
        "evaluate": {
            "eval": {
                "tasks": ["arithmetic"],
                "arithmetic": {"num_train": 32, "num_eval": 8},
                "limit": 8,
                "max_new_tokens": 4,
                "num_threads": 1,
            }
        },
    }


def smallest(root, reference, **kw) -> PipelineConfig:
    return PipelineConfig(root=str(root), stages=smallest_stages(reference), **kw)


def artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            limit=1, sort=ArtifactSort.CREATED_DESC, artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )[0]


CHAIN = ["data", "tokenizer", "tokenize", "pretrain", "sft", "dpo", "grpo", "evaluate"]


@pytest.mark.slow
def test_pipeline_runs_the_chain_and_reuses_stages_by_fingerprint(prefect_harness, reference, tmp_path):
    first_path = pipeline_flow(config=smallest(tmp_path, reference))
    first = json.loads(open(first_path).read())
    rows = first["lineage"]
    ran = {s["stage"]: s["manifest"] for s in first["stages"]}
    assert list(ran) == CHAIN
    final = {name: read_manifest(p) for name, p in ran.items()}
    # Each stage read the manifest of the one before it: the lineage is the chain.
    assert final["tokenize"]["vocab_size"] == 300
    assert final["data"]["stage"] == "minhash"
    assert [i["fingerprint"] for i in final["tokenizer"]["inputs"]] == [final["data"]["fingerprint"]]
    for up, down in [
        ("tokenize", "pretrain"),
        ("pretrain", "sft"),
        ("sft", "dpo"),
        ("dpo", "grpo"),
        ("grpo", "evaluate"),
    ]:
        assert final[up]["fingerprint"] in {i["fingerprint"] for i in final[down]["inputs"]}, (up, down)
    by_fp = {r["fingerprint"]: r for r in rows}
    assert all(by_fp[m["fingerprint"]]["pipeline_stage"] == name for name, m in final.items())
    assert rows[0]["stage"] == "extract" and (rows[0]["in"], rows[0]["kept"]) == (
        88,
        46,
    )  # the reference WARCs: 46 pages
    assert {r["status"] for r in rows} == {"ran"}
    assert all(r["directory"].startswith(str(tmp_path)) for r in rows)
    assert list((tmp_path / "pipeline").glob("*/lineage.png"))
    md = artifact("pipeline-summary").data
    assert all(r["fingerprint"] in md for r in rows) and "data:image/png;base64," in md

    # Start at tokenize from the manifests that exist, with a longer pretraining: tokenize
    # finds its fingerprint (reused, as is everything upstream); pretrain and every stage
    # after it run again, because their input changed.
    stages = smallest_stages(reference)
    stages["pretrain"]["train"]["max_steps"] = 5
    late = PipelineConfig(
        root=str(tmp_path),
        stages=stages,
        start_from="tokenize",
        manifests={"data": ran["data"], "tokenizer": "tokenizer@latest"},
    )
    second_path = pipeline_flow(config=late)
    second = json.loads(open(second_path).read())
    assert [s["stage"] for s in second["stages"]] == CHAIN[2:]
    status = {r["fingerprint"]: r["status"] for r in second["lineage"]}
    outputs = {s["stage"]: read_manifest(s["manifest"])["fingerprint"] for s in second["stages"]}
    assert status[outputs["tokenize"]] == "reused"
    assert {s: status[outputs[s]] for s in CHAIN[3:]} == {s: "ran" for s in CHAIN[3:]}
    assert {r["status"] for r in second["lineage"] if r["stage"] in ("extract", "minhash", "tokenizer")} == {"reused"}
    # Stages given as manifests keep their own names in the lineage.
    owner = {r["stage"]: r["pipeline_stage"] for r in second["lineage"]}
    assert (owner["extract"], owner["minhash"], owner["tokenizer"]) == ("data", "data", "tokenizer")

    # The two runs side by side (`lmpipe compare A/lineage.json B/lineage.json`): the stages both ran.
    from lm.compare import compare

    cmps = {c.stage: c for c in compare(first_path, second_path)}
    assert list(cmps) == CHAIN[2:] and cmps["tokenize"].same
    pretrain = cmps["pretrain"]
    assert ("train.max_steps", 4, 5) in pretrain.config
    assert [len(pts) for pts in pretrain.curves["train loss"]] == [4, 5]  # log_interval 1: one point per step


def test_bad_stage_config_fails_before_any_work(prefect_harness, reference, tmp_path):
    # An unknown key is refused when the config is built, naming the nearest field.
    with pytest.raises(ValueError, match="did you mean 'max_workers'"):
        PipelineConfig(root=str(tmp_path), stages={"data": {**data_config(tmp_path, reference), "max_worker": 1}})
    # What only the stage's own model checks, or a stage's missing input, fails before the first stage runs.
    for stages, match in (
        (
            {"data": data_config(tmp_path, reference), "tokenizer": {"special_tokens": [""]}},
            "stages.tokenizer: special_tokens must not contain an empty string",
        ),
        (
            {"data": {**data_config(tmp_path, reference), "sources": [str(tmp_path / "none.warc.gz")]}},
            "none.warc.gz' does not exist",
        ),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            pipeline_flow(config=PipelineConfig(root=str(tmp_path), stages=stages))
    assert not any(tmp_path.iterdir()), "a stage ran although the config was invalid"


def test_a_stage_section_is_its_named_config_with_overrides():
    """pipeline-demo.yaml names each stage's file and overrides a few fields; the merged config
    is what the stage validates (fixed and input fields are the pipeline's)."""
    import yaml

    from flows.pipeline import STAGES, stage_config
    from flows.registry import REPO, config_model

    cfg = PipelineConfig.model_validate(yaml.safe_load((REPO / "configs" / "pipeline-demo.yaml").read_text()))
    spec = {s.name: s for s in STAGES}
    sft = stage_config(spec["sft"], cfg, {"pretrain": "P"}, config_model("sft"))
    named = yaml.safe_load((REPO / "configs" / "sft-demo.yaml").read_text())
    assert sft.sft.num_steps == 300 and sft.sft.stop_at_reward is None and sft.sft.eval_every == 50  # overridden
    assert (
        sft.sft.batch_size == named["sft"]["batch_size"] and sft.data.num_train == named["data"]["num_train"]
    )  # the file's
    assert sft.model_manifest == "P" and sft.root == "outputs"
    grpo = stage_config(spec["grpo"], cfg, {"dpo": "D"}, config_model("grpo"))
    assert grpo.sft_first is None and grpo.grpo.num_steps == 100 and grpo.grpo.group_size == 8
    tok = stage_config(spec["tokenizer"], cfg, {"data": "M"}, config_model("tokenizer"))
    assert tok.input == "M" and tok.vocab_size == 3000  # the file's `input: minhash@latest` is the pipeline's to fill
    other = PipelineConfig.model_validate(
        {"root": "/elsewhere", "stages": {"sft": {"config": "configs/sft-demo.yaml"}}}
    )
    assert (
        stage_config(spec["sft"], other, {"pretrain": "P"}, config_model("sft")).root == "/elsewhere"
    )  # not the file's root
    with pytest.raises(FileNotFoundError, match="configs/sft-demo.yaml"):
        stage_config(
            spec["sft"], PipelineConfig(stages={"sft": {"config": "configs/sft.yaml"}}), {}, config_model("sft")
        )


def test_config_names_unknown_stages():
    from lm.config import format_validation_error

    with pytest.raises(ValueError) as e:
        PipelineConfig(start_from="tokenizr")
    assert "did you mean 'tokenizer'" in format_validation_error(e.value)
    with pytest.raises(ValueError, match="did you mean 'data'"):
        PipelineConfig(stages={"dat": {}})
    with pytest.raises(ValueError, match="always run"):
        PipelineConfig(optional_stages=["sft"])


STAGES = [
    StageSpec("a"),
    StageSpec("b", {"input_manifest": "a"}),
    StageSpec("s", {"input_manifest": "b"}, optional=True),
    StageSpec("c", {"x": "a", "y": "b"}),
]


def test_plan_starts_late_only_with_upstream_manifests(tmp_path, reference):
    cfg = PipelineConfig.model_construct(
        start_from="b", stop_after=None, manifests={}, optional_stages=[], stages={}, root="x"
    )
    with pytest.raises(ValueError, match=r"manifests\.a="):
        plan(cfg, STAGES)
    cfg = PipelineConfig.model_construct(
        start_from="b",
        stop_after=None,
        manifests={"a": str(tmp_path / "nope")},
        optional_stages=[],
        stages={},
        root="x",
    )
    with pytest.raises(FileNotFoundError):
        plan(cfg, STAGES)


def test_plan_skips_optional_stages_unless_asked():
    base = dict(start_from=None, stop_after=None, manifests={}, stages={}, root="x")
    assert [s.name for s in plan(PipelineConfig.model_construct(optional_stages=[], **base), STAGES)] == ["a", "b", "c"]
    assert [s.name for s in plan(PipelineConfig.model_construct(optional_stages=["s"], **base), STAGES)] == [
        "a",
        "b",
        "s",
        "c",
    ]
    stop = {**base, "stop_after": "b"}
    assert [s.name for s in plan(PipelineConfig.model_construct(optional_stages=["s"], **stop), STAGES)] == ["a", "b"]


def test_lineage_of_a_missing_manifest_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no stage manifest"):
        lineage({"data": str(tmp_path / "x" / "_manifest.json")}, "2026-01-01T00:00:00+00:00")


def test_manifests_take_stage_at_latest_under_the_pipelines_root(tmp_path):
    from lm.data.shards import Stage

    done = str(Stage(tmp_path, "minhash", version="1", config={}).commit(0))
    assert PipelineConfig(root=str(tmp_path), manifests={"data": "minhash@latest"}).manifests.data == done
    with pytest.raises(ValueError, match=r"manifests.tokenizer='tokenizer@latest': no stage folder"):
        PipelineConfig(root=str(tmp_path), manifests={"tokenizer": "tokenizer@latest"})
