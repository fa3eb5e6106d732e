"""The sft, dpo, grpo and evaluate flows end to end on the demo task, tiny sizes, real Prefect."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from artifact_checks import assert_progress, latest_artifact  # tests/flows is on sys.path

from flows.cli import FLOWS, build_config, config_model, load_flow
from lm.align.verdict import verdict_from_metrics
from lm.data.shards import read_manifest, read_stage_table

TINY = {
    "data": {"num_train": 200, "num_eval": 16},
    "base": {"num_steps": 5, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64},
    "options": {"max_new_tokens": 4, "num_samples": 8, "num_threads": 1},
}


@pytest.mark.parametrize("name", ["sft", "dpo", "grpo", "evaluate", "align-demo"])
def test_demo_configs_validate(name):
    assert name in FLOWS
    model = config_model(load_flow(name))
    cfg = build_config(model, f"configs/{name}-demo.yaml" if name != "align-demo" else "configs/align-demo.yaml", [])
    assert cfg.root == "outputs"
    with pytest.raises(Exception, match="root"):
        build_config(model, None, ["root=[1, 2]"])


def test_flows_end_to_end(prefect_harness, tmp_path):
    from flows.dpo import DPOFlowConfig, dpo_flow
    from flows.evaluate import EvaluateFlowConfig, evaluate_flow
    from flows.grpo import GRPOFlowConfig, grpo_flow
    from flows.sft import SFTFlowConfig, sft_flow

    root = str(tmp_path)
    sft_cfg = SFTFlowConfig.model_validate(
        {**TINY, "root": root, "sft": {"num_steps": 6, "batch_size": 8, "eval_every": 3}}
    )
    state = sft_flow(config=sft_cfg, return_state=True)
    sft = state.result()
    # progress: artifact at 100, a line per step (6 steps: the cadence is 1), the curves, the
    # reward verdict in the report
    assert_progress("sft", flow_run_id=state.state_details.flow_run_id, total=6, every=1)
    m = read_manifest(sft)
    verdict = verdict_from_metrics(m["metrics"])
    assert verdict.num_prompts == 8 and verdict.message("SFT") in latest_artifact("sft-report").data
    assert m["stage"] == "sft" and set(m) >= {
        "fingerprint",
        "config",
        "inputs",
        "shards",
        "counts",
        "checkpoint",
        "tokenizer",
    }
    assert [i["stage"] for i in m["inputs"]] == ["align-base", "align-data"]
    assert m["metrics"]["nll_after"] < m["metrics"]["nll_before"]
    assert Path(m["plot"]).exists() and (Path(m["checkpoint"]) / "meta.json").exists()
    samples = read_stage_table(m).to_pylist()
    assert len(samples) == 8 and {"generation_before", "generation_after", "reward_before"} <= set(samples[0])
    assert sft_flow(config=sft_cfg) == sft  # same config + inputs: the stage is reused

    dpo = dpo_flow(
        config=DPOFlowConfig.model_validate(
            {**TINY, "root": root, "model_manifest": sft, "dpo": {"num_steps": 3, "batch_size": 4, "eval_every": 3}}
        )
    )
    assert read_manifest(dpo)["inputs"][0]["path"] == str(Path(sft))
    assert "likelihood_accuracy_after" in read_manifest(dpo)["metrics"]
    assert_progress("dpo")

    grpo = grpo_flow(
        config=GRPOFlowConfig.model_validate(
            {
                **TINY,
                "root": root,
                "model_manifest": sft,
                "grpo": {
                    "num_steps": 2,
                    "num_prompts_per_step": 2,
                    "group_size": 4,
                    "max_new_tokens": 4,
                    "eval_every": 2,
                },
            }
        )
    )
    g = read_manifest(grpo)
    assert g["counts"]["rollouts"] == 2 * 2 * 4  # steps × prompts × group size (greedy evaluations not counted)
    assert 0.0 <= g["metrics"]["eval_reward_after"] <= 1.0
    assert_progress("grpo")

    ev = evaluate_flow(
        config=EvaluateFlowConfig.model_validate(
            {
                "root": root,
                "model_manifest": grpo,
                "eval": {"tasks": ["arithmetic"], "arithmetic": TINY["data"], "limit": 16, "max_new_tokens": 4},
            }
        )
    )
    e = read_manifest(ev)
    table = pq.read_table(Path(ev).parent / e["shards"][0]["name"])
    assert table.num_rows == 16 and table.column_names == [
        "id",
        "task",
        "prompt",
        "generation",
        "parsed",
        "answer",
        "correct",
    ]
    assert e["metrics"]["arithmetic_accuracy"] == sum(table.column("correct").to_pylist()) / 16
    assert_progress("evaluate")


def test_flow_bad_arguments_fail_before_work(prefect_harness, tmp_path):
    from flows.grpo import GRPOFlowConfig
    from flows.sft import SFTFlowConfig, sft_flow

    with pytest.raises(FileNotFoundError, match="model_manifest"):
        sft_flow(config=SFTFlowConfig(root=str(tmp_path), model_manifest=str(tmp_path / "nope/_manifest.json")))
    with pytest.raises(ValueError, match="model_manifest is required"):
        sft_flow(config=SFTFlowConfig.model_validate({"root": str(tmp_path), "data": {"source": "gsm8k"}}))
    with pytest.raises(Exception, match="loss_type"):
        GRPOFlowConfig.model_validate({"grpo": {"loss_type": "ppo"}})
    assert not list(tmp_path.iterdir())


def test_a_falling_chain_is_flagged_in_the_summary(prefect_harness):
    """The web-text chain of the pipeline demo (SFT 0.080 → DPO 0.045 → GRPO 0.030) and one
    that never left chance: the summary artifact says so before its table."""
    from prefect import flow

    from flows.align_demo import publish_chain_summary

    falling = {
        "sft": {"accuracy_before": 0.0, "accuracy_after": 0.080, "num_scored": 200},
        "dpo": {"accuracy_before": 0.080, "accuracy_after": 0.045, "num_scored": 200},
        "grpo": {"accuracy_before": 0.045, "accuracy_after": 0.030, "num_scored": 200},
        "evaluate": {"arithmetic_accuracy": 0.03},
    }
    chance = {
        "sft": {"accuracy_before": 0.0, "accuracy_after": 0.0, "num_scored": 200},
        "grpo": {"accuracy_before": 0.0, "accuracy_after": 0.005, "num_scored": 200},
    }

    @flow(name="chain-check")
    def check(summary: dict, name: str) -> list[str]:
        return publish_chain_summary(name, summary)

    warnings = check(falling, "web-chain")
    assert [w.split(" did NOT")[0] for w in warnings] == ["⚠ DPO", "⚠ GRPO"]
    md = latest_artifact("web-chain-summary").data
    assert (
        md.index("⚠ DPO did NOT raise the reward") < md.index("| stage |")
        and "| GRPO | 0.045 | 0.030 | 200 | FLAT |" in md
    )
    assert check(chance, "chance-chain")[-1].startswith("⚠ the reward never rose above chance in SFT → GRPO")
    assert "never rose above chance" in latest_artifact("chance-chain-summary").data
