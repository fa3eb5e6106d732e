"""Evaluate flow: GSM8K / MMLU / arithmetic accuracy and perplexity of a checkpoint; writes <root>/evaluate/<fp>/.

    lmpipe run evaluate --config configs/evaluate-demo.yaml --set model_manifest=outputs/grpo/<fp>/_manifest.json
    lmpipe run evaluate --set model_manifest=... --set 'eval.tasks=[gsm8k, mmlu]' \\
        --set eval.gsm8k_path=../shared/reference/assignment5-alignment/data/gsm8k/test.jsonl \\
        --set eval.mmlu_path=../shared/reference/assignment5-alignment/data/mmlu/test
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import Field, field_validator

from lm.align.stages import BaseModelConfig
from lm.config import Config, StageRef
from lm.data.shards import read_manifest
from lm.data.storage import check_local_root
from lm.eval.stage import EvalConfig
from tasks.align import evaluate_task, model_manifest_or_demo
from tasks.artifacts import artifact_key, markdown_table, publish_stage, sample_rows


class EvaluateFlowConfig(Config):
    """Evaluation of a checkpoint."""

    root: str = Field("outputs", description="Artifact root: stages are written under `<root>/<stage>/<fingerprint>/`.")
    model_manifest: StageRef | None = Field(
        None,
        description=(
            "Manifest of the model to evaluate (pretrain/align-base/sft/dpo/grpo "
            "stage, or e.g. `grpo@latest`); empty = the demo base model."
        ),
    )
    base: BaseModelConfig = Field(
        default_factory=BaseModelConfig, description="Demo base model (used only without model_manifest)."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Tasks, data paths and generation settings.")

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "evaluate")  # URL roots: see docs/storage.md


@flow(name="evaluate", log_prints=True)
def evaluate_flow(config: EvaluateFlowConfig) -> str:
    model = model_manifest_or_demo(config.root, config.model_manifest, config.eval.arithmetic, config.base)
    out = evaluate_task(config.root, model, config.eval)
    publish_stage(out, text_field=None)
    m = read_manifest(out)
    metrics = m["metrics"]
    md = [
        "# Evaluation",
        f"Model `{model}`",
        "",
        markdown_table(
            [{"metric": k, "value": v if not isinstance(v, dict) else v.get("perplexity")} for k, v in metrics.items()]
        ),
        "## Sample rows",
        markdown_table(sample_rows(m, n=10, width=120)),
    ]
    create_markdown_artifact(
        markdown="\n".join(md), key=artifact_key("evaluate", "report"), description="accuracy per task and samples"
    )
    print(metrics)
    return out
