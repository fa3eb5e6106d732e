"""DPO flow: preference-tune a checkpoint against itself as frozen reference; writes <root>/dpo/<fp>/.

    lmpipe run dpo --config configs/dpo-demo.yaml --set model_manifest=outputs/sft/<fp>/_manifest.json

Preference triples come from the data source: for addition and GSM8K, chosen = the right
answer, rejected = the same with a wrong final number.
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field, field_validator

from lm.align.dpo import DPOConfig
from lm.align.stages import AlignDataConfig, BaseModelConfig, StageOptions
from lm.config import Config, StageRef
from lm.data.storage import check_local_root
from tasks.align import align_data_task, dpo_task, model_manifest_or_demo, publish_training_stage


class DPOFlowConfig(Config):
    """Direct Preference Optimization of a checkpoint."""

    root: str = Field("outputs", description="Artifact root: stages are written under `<root>/<stage>/<fingerprint>/`.")
    model_manifest: StageRef | None = Field(
        None,
        description=(
            "Manifest of the model to tune (also the frozen reference; or e.g. `sft@latest`); empty = demo base model."
        ),
    )
    data: AlignDataConfig = Field(
        default_factory=AlignDataConfig, description="Source of preference triples (train and held-out)."
    )
    base: BaseModelConfig = Field(
        default_factory=BaseModelConfig, description="Demo base model (used only without model_manifest)."
    )
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO hyperparameters.")
    options: StageOptions = Field(default_factory=StageOptions, description="Verifier, sampling and threads.")

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "dpo")  # URL roots: see docs/storage.md


@flow(name="dpo", log_prints=True)
def dpo_flow(config: DPOFlowConfig) -> str:
    model = model_manifest_or_demo(config.root, config.model_manifest, config.data, config.base)
    data = align_data_task(config.root, config.data, "preference")
    out = dpo_task(config.root, model, data, config.dpo, config.options)
    publish_training_stage(out, "DPO")
    return out
