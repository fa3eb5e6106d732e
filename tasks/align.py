"""Prefect tasks of the alignment stages: thin wrappers around ``lm.align.stages``.

Each takes manifest paths and configs, runs one stage (skipped when its fingerprinted
output already exists) and returns the new stage's manifest path. The training stages and
evaluate report progress as they run (tasks/progress.py: a progress artifact, a log line
every 5% of the steps, a closing artifact with the curves).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from lm.align import stages
from lm.align.dpo import DPOConfig
from lm.align.grpo import GRPOConfig
from lm.align.sft import SFTConfig
from lm.align.verdict import verdict_from_metrics
from lm.data.shards import read_manifest
from lm.eval.stage import EvalConfig, evaluate_size, run_evaluate
from tasks.progress import Progress


@task(name="align-data", retries=1)
def align_data_task(root: str, data: stages.AlignDataConfig, kind: str) -> str:
    return str(stages.build_align_data(root, data, kind))


@task(name="align-base", retries=1)
def demo_base_task(root: str, data: stages.AlignDataConfig, base: stages.BaseModelConfig) -> str:
    return str(stages.make_demo_base(root, data, base))


def _tracked(name: str, title: str, total: int, run, *args) -> str:
    """Run a stage function with a Progress as its hook; close it with the stage's curves and verdict."""
    with Progress(name, total) as progress:
        out = run(*args, on_progress=progress)
    m = read_manifest(out)
    verdict = verdict_from_metrics(m.extra.get("metrics", {}), m.counts.kept)
    progress.finish(
        title,
        png=Path(out).parent / "curves.png",
        note=verdict.message(title) if verdict else "",
        reused=not progress.history,
    )
    return str(out)


@task(name="sft", retries=1)
def sft_task(root: str, model_manifest: str, data_manifest: str, cfg: SFTConfig, opts: stages.StageOptions) -> str:
    return _tracked("sft", "SFT", cfg.num_steps, stages.run_sft, root, model_manifest, data_manifest, cfg, opts)


@task(name="dpo", retries=1)
def dpo_task(root: str, model_manifest: str, data_manifest: str, cfg: DPOConfig, opts: stages.StageOptions) -> str:
    return _tracked("dpo", "DPO", cfg.num_steps, stages.run_dpo, root, model_manifest, data_manifest, cfg, opts)


@task(name="grpo", retries=1)
def grpo_task(root: str, model_manifest: str, data_manifest: str, cfg: GRPOConfig, opts: stages.StageOptions) -> str:
    return _tracked("grpo", "GRPO", cfg.num_steps, stages.run_grpo, root, model_manifest, data_manifest, cfg, opts)


@task(name="evaluate", retries=1)
def evaluate_task(root: str, model_manifest: str, cfg: EvalConfig) -> str:
    with Progress("evaluate", evaluate_size(cfg), unit="problem") as progress:
        out = run_evaluate(root, model_manifest, cfg, on_progress=progress)
    metrics = read_manifest(out)["metrics"]
    progress.finish(
        "Evaluation",
        note=", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)),
        reused=not progress.history,
    )
    return str(out)


def model_manifest_or_demo(
    root: str, model_manifest: str | None, data: stages.AlignDataConfig, base: stages.BaseModelConfig
) -> str:
    """The given model manifest, or (none given, addition data) the demo base model's."""
    if model_manifest:
        if not Path(model_manifest).exists():
            raise FileNotFoundError(
                f"model_manifest {model_manifest} does not exist (expected <root>/<stage>/<fp>/_manifest.json)"
            )
        return model_manifest
    if data.source != "addition":
        raise ValueError(
            "model_manifest is required unless data.source='addition' (the demo trains its own base model)"
        )
    return demo_base_task(root, data, base)


def publish_training_stage(manifest_path: str, title: str) -> None:
    """Counts + samples (publish_stage), then the reward verdict, metrics before/after, the curves
    and sample generations."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.artifacts import artifact_key, image_markdown, markdown_table, publish_stage, sample_rows

    m = read_manifest(manifest_path)
    publish_stage(manifest_path, text_field=None)
    metrics = m.extra.get("metrics", {})
    md = [
        f"# {title}",
        f"Checkpoint `{m.extra.get('checkpoint', '-')}` · tokenizer `{m.extra.get('tokenizer', '-')}`",
        "",
    ]
    verdict = verdict_from_metrics(metrics, m.counts.kept)
    if verdict is not None:
        md += [f"> {verdict.message(title)}" if verdict.warn else verdict.message(title), ""]
    md.append(
        markdown_table(
            [
                {"metric": k, "value": round(v, 4) if isinstance(v, float) else v}
                for k, v in metrics.items()
                if not isinstance(v, dict)
            ]
        )
    )
    plot = m.extra.get("plot")
    if plot and Path(plot).exists():
        md.append(image_markdown(plot, f"{m.stage} curves"))
    rows = sample_rows(m, n=8, width=120)
    if rows:
        md += ["## Sample generations", markdown_table(rows)]
    create_markdown_artifact(
        markdown="\n".join(md), key=artifact_key(m.stage, "report"), description=f"{title}: metrics, curves, samples"
    )
