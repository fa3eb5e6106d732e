"""The alignment demo on a CPU: tiny char-level model, addition problems, SFT → DPO and SFT → GRPO.

    lmpipe run align-demo --config configs/align-demo.yaml                  # ~3-5 CPU minutes
    lmpipe run align-demo --config configs/align-demo.yaml --set root=/tmp/demo

configs/align-demo.yaml holds the demo's sizes (the model's defaults are the stages' own).

Stages: align-base (short pretraining) → sft (lowers held-out response NLL) → dpo (raises
preference accuracy on held-out right-vs-wrong answers) and grpo (raises the mean verifier
reward on held-out problems) → evaluate (arithmetic accuracy of the GRPO model). Each
stage's manifest records the before/after figures; the flow prints them and publishes a
summary that flags, loudly, a stage whose held-out reward fell or stayed flat.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field, field_validator

from lm.align.dpo import DPOConfig
from lm.align.grpo import GRPOConfig
from lm.align.sft import SFTConfig
from lm.align.stages import AlignDataConfig, BaseModelConfig, StageOptions
from lm.align.verdict import chain_warnings, verdict_from_metrics
from lm.config import Config
from lm.data.shards import read_manifest
from lm.data.storage import check_local_root
from lm.eval.stage import EvalConfig
from tasks.align import (
    align_data_task,
    demo_base_task,
    dpo_task,
    evaluate_task,
    grpo_task,
    publish_training_stage,
    sft_task,
)
from tasks.artifacts import artifact_key, markdown_table


class AlignDemoConfig(Config):
    """The whole alignment chain on the addition task, sized for a CPU."""

    root: str = Field("outputs", description="Artifact root.")
    data: AlignDataConfig = Field(default_factory=AlignDataConfig, description="Addition problems.")
    base: BaseModelConfig = Field(default_factory=BaseModelConfig, description="Tiny base model.")
    sft: SFTConfig = Field(
        default_factory=SFTConfig,
        description=(
            "SFT; configs/align-demo.yaml stops it once the model is right "
            "on 30% of a sample of training problems, leaving GRPO room."
        ),
    )
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO on right-vs-wrong answers.")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="GRPO with the exact-arithmetic verifier.")
    options: StageOptions = Field(default_factory=StageOptions, description="Verifier, sampling, threads.")

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "align-demo")  # URL roots: see docs/storage.md


@flow(name="align-demo", log_prints=True)
def align_demo_flow(config: AlignDemoConfig) -> dict:
    root = config.root
    base = demo_base_task(root, config.data, config.base)
    pairs = align_data_task(root, config.data, "instruction")
    sft = sft_task(root, base, pairs, config.sft, config.options)
    prefs = align_data_task(root, config.data, "preference")
    dpo = dpo_task(root, sft, prefs, config.dpo, config.options)
    problems = align_data_task(root, config.data, "problem")
    grpo = grpo_task(root, sft, problems, config.grpo, config.options)
    ev = evaluate_task(
        root,
        grpo,
        EvalConfig(
            tasks=["arithmetic"],
            arithmetic=config.data,
            limit=config.data.num_eval,
            max_new_tokens=config.options.max_new_tokens,
            num_threads=config.options.num_threads,
        ),
    )
    for path, title in ((sft, "SFT"), (dpo, "DPO"), (grpo, "GRPO")):
        publish_training_stage(path, title)
    summary = {
        name: {**read_manifest(p)["metrics"], "manifest": str(p)}
        for name, p in (("sft", sft), ("dpo", dpo), ("grpo", grpo), ("evaluate", ev))
    }
    for name, m in summary.items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()})
    publish_chain_summary("align-demo", summary)
    return summary


def publish_chain_summary(name: str, summary: dict[str, dict]) -> list[str]:
    """A table of each stage's held-out reward before → after and, loudly, every stage that did
    not raise it and a chain that never rose above chance. Returns the warnings (also logged)."""
    verdicts = [(stage.upper(), v) for stage, m in summary.items() if (v := verdict_from_metrics(m)) is not None]
    warnings = chain_warnings(verdicts)
    rows = [
        {
            "stage": s,
            "reward before": f"{v.before:.3f}",
            "reward after": f"{v.after:.3f}",
            "prompts": v.num_prompts,
            "trend": v.trend.upper() if v.warn else v.trend,
            "above chance": v.above_chance,
        }
        for s, v in verdicts
    ]
    md = [f"# {name}: held-out verifier reward through the chain", ""]
    md += [f"> {w}" for w in warnings] + ([""] if warnings else ["Every stage raised the held-out reward.", ""])
    md.append(markdown_table(rows))
    create_markdown_artifact(
        markdown="\n".join(md),
        key=artifact_key(name, "summary"),
        description=f"{name}: rewards before → after each stage",
    )
    log = get_run_logger()
    for w in warnings:
        log.warning(w)
    return warnings
