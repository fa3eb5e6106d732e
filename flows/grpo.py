"""GRPO flow: reinforce a checkpoint with verifier rewards on held-out-checked problems; writes <root>/grpo/<fp>/.

    lmpipe run grpo --config configs/grpo-demo.yaml --set model_manifest=outputs/sft/<fp>/_manifest.json
    lmpipe run grpo --set model_manifest=... --set data.source=gsm8k --set options.verifier=r1_zero \\
        --set data.template=r1_zero --set data.prompts_dir=../shared/reference/assignment5-alignment/prompts
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field, field_validator

from lm.align.grpo import GRPOConfig
from lm.align.sft import SFTConfig
from lm.align.stages import AlignDataConfig, BaseModelConfig, StageOptions
from lm.config import Config, StageRef
from lm.data.storage import check_local_root
from tasks.align import align_data_task, grpo_task, model_manifest_or_demo, publish_training_stage, sft_task


class GRPOFlowConfig(Config):
    """Group Relative Policy Optimization of a checkpoint with a verifier."""

    root: str = Field("outputs", description="Artifact root: stages are written under `<root>/<stage>/<fingerprint>/`.")
    model_manifest: StageRef | None = Field(
        None, description="Manifest of the policy to train (or e.g. `dpo@latest`); empty = demo base model."
    )
    data: AlignDataConfig = Field(
        default_factory=AlignDataConfig, description="Verifiable problems (train and held-out)."
    )
    base: BaseModelConfig = Field(
        default_factory=BaseModelConfig, description="Demo base model (used only without model_manifest)."
    )
    sft_first: SFTConfig | None = Field(
        None,
        description=(
            "Warm start: SFT on the same data before GRPO (the demo base "
            "model is right too rarely for rewards to vary); null = none."
        ),
    )
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="GRPO hyperparameters.")
    options: StageOptions = Field(
        default_factory=StageOptions, description="Verifier (required), sampling and threads."
    )

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "grpo")  # URL roots: see docs/storage.md


@flow(name="grpo", log_prints=True)
def grpo_flow(config: GRPOFlowConfig) -> str:
    model = model_manifest_or_demo(config.root, config.model_manifest, config.data, config.base)
    if config.sft_first is not None:
        pairs = align_data_task(config.root, config.data, "instruction")
        model = sft_task(config.root, model, pairs, config.sft_first, config.options)
        publish_training_stage(model, "SFT (GRPO warm start)")
    data = align_data_task(config.root, config.data, "problem")
    out = grpo_task(config.root, model, data, config.grpo, config.options)
    publish_training_stage(out, "GRPO")
    return out
