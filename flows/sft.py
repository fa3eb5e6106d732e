"""SFT flow: fine-tune a checkpoint on (prompt, response) pairs; writes <root>/sft/<fp>/.

    lmpipe run sft --config configs/sft-demo.yaml
    lmpipe run sft --set model_manifest=outputs/pretrain/<fp>/_manifest.json --set data.source=gsm8k \\
        --set data.train_path=../shared/reference/assignment5-alignment/data/gsm8k/train.jsonl

With no model_manifest and data.source=addition it first trains the demo's tiny base model.
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field, field_validator

from lm.align.sft import SFTConfig
from lm.align.stages import AlignDataConfig, BaseModelConfig, StageOptions
from lm.config import Config, StageRef
from lm.data.storage import check_local_root
from tasks.align import align_data_task, model_manifest_or_demo, publish_training_stage, sft_task


class SFTFlowConfig(Config):
    """Supervised fine-tuning of a checkpoint."""

    root: str = Field("outputs", description="Artifact root: stages are written under `<root>/<stage>/<fingerprint>/`.")
    model_manifest: StageRef | None = Field(
        None,
        description=(
            "Manifest of the model to fine-tune (pretrain/sft/dpo/grpo "
            "stage, or e.g. `pretrain@latest`); empty = demo base model."
        ),
    )
    data: AlignDataConfig = Field(
        default_factory=AlignDataConfig, description="Instruction pairs (train and held-out)."
    )
    base: BaseModelConfig = Field(
        default_factory=BaseModelConfig, description="Demo base model (used only without model_manifest)."
    )
    sft: SFTConfig = Field(default_factory=SFTConfig, description="SFT hyperparameters.")
    options: StageOptions = Field(default_factory=StageOptions, description="Verifier, sampling and threads.")

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "sft")  # URL roots: see docs/storage.md


@flow(name="sft", log_prints=True)
def sft_flow(config: SFTFlowConfig) -> str:
    model = model_manifest_or_demo(config.root, config.model_manifest, config.data, config.base)
    data = align_data_task(config.root, config.data, "instruction")
    out = sft_task(config.root, model, data, config.sft, config.options)
    publish_training_stage(out, "SFT")
    return out
