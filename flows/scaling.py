"""The `scaling` flow: plan an IsoFLOP sweep, train its runs (cached per run), fit, judge, recommend.

    lmpipe run scaling --config configs/scaling-demo.yaml
    lmpipe run scaling --config configs/scaling-demo.yaml --set target_budget=1e13
    lmpipe run scaling --config configs/scaling-demo.yaml --set budgets=auto

Reads a token-shard directory (the tokenize stage's output). Each (budget, model size) pair
is one mapped training task whose result is cached under ``<root>/scaling-runs/<fp>/``, so
rerunning trains nothing and adding a budget or a size trains only the new runs. Writes the
``scaling`` stage (runs table, fits, verdict, plots; see lm/scaling/stage.py, which also runs
the whole stage without Prefect) and publishes the sweep's progress as runs finish, the runs
table, the fitted-law table with intervals, and the recommendation with the IsoFLOP plot — or,
when the runs bracket no minimum or a fit is degenerate, a plain statement that it is not a result.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field, model_validator

from flows.runners import RunnerConfig, resolve_location, task_runner
from lm.scaling.report import verdict_message
from lm.scaling.stage import plan_sweep, sweep_result
from lm.scaling.sweep import ScalingConfig
from tasks.artifacts import artifact_key, image_markdown, markdown_table, publish_stage
from tasks.progress import Progress
from tasks.scaling import fit_scaling, train_scaling_run


class ScalingFlowConfig(ScalingConfig):
    """The sweep (lm.scaling.sweep.ScalingConfig) plus where its training runs execute."""

    runner: RunnerConfig = Field(
        default_factory=RunnerConfig,
        description="where training runs execute: threads (default), "
        "processes, or a Dask/Ray cluster (each run is one task); "
        "a local pool or cluster gets max_parallel_runs workers unless runner.max_workers is set",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_sweep(cls, data):
        # A plain ScalingConfig (tests, notebooks, the pipeline) runs on the default runner.
        if isinstance(data, ScalingConfig) and not isinstance(data, cls):
            return data.model_dump()
        return data


@flow(name="scaling")
def scaling_flow(config: ScalingFlowConfig) -> dict:
    log = get_run_logger()
    # Absolute paths: runs may execute in other processes or on other machines.
    config = config.model_copy(
        update={
            "root": resolve_location(config.root),
            "corpus": resolve_location(config.corpus) if config.corpus else None,
        }
    )
    config, corpus, runs, plan_notes = plan_sweep(
        config
    )  # a bad corpus or an empty plan fails here, before any training
    for note in plan_notes:
        log.warning(note)
    log.info(f"{len(runs)} runs planned over {len(config.budgets)} budgets {[f'{b:.3g}' for b in config.budgets]}")
    progress = Progress("scaling", len(runs), unit="run")
    rows = []
    step = config.max_parallel_runs
    with task_runner(config.runner, config.max_parallel_runs) as runner:
        for wave in (runs[i : i + step] for i in range(0, len(runs), step)):
            futures = runner.map(
                train_scaling_run,
                {
                    "run": wave,
                    "corpus": unmapped(corpus),
                    "root": unmapped(config.root),
                    "device": unmapped(config.device),
                    "cpu_threads": unmapped(config.cpu_threads),
                },
            )
            for f in futures:  # in the plan's order (the runs table's); a wave's later runs are done by then
                rows.append(f.result())
                progress(run_event(rows[-1], len(rows)))
    for r in rows:
        if r["status"] == "failed":
            log.error(f"run {r['run_id']} failed: {r['note']}")
    manifest = fit_scaling(rows, config, corpus, plan_notes)
    result = sweep_result(rows, manifest)
    out = Path(manifest).parent
    progress.finish(
        "Scaling sweep", png=out / "curves.png", note=verdict_message(result["verdict"]), reused=not result["trained"]
    )
    publish(rows, out, manifest)
    return result


def run_event(row: dict, done: int) -> dict:
    """One finished run as a progress event: its final loss and throughput."""
    loss = row.get("final_val_loss")
    tps = row["tokens"] / row["wall_time_s"] if row.get("wall_time_s") and not row.get("cached") else None
    return {
        "step": done,
        **({"val_loss": loss} if isinstance(loss, float) and math.isfinite(loss) else {}),
        **({"tokens_per_s": tps} if tps else {}),
    }


def finite_or_none(row: dict) -> dict:
    """Table artifacts are JSON: NaN becomes None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def publish(rows: list[dict], out: Path, manifest: str) -> None:
    table = [
        finite_or_none(
            {
                k: r.get(k)
                for k in (
                    "budget",
                    "d_model",
                    "num_layers",
                    "params",
                    "tokens",
                    "compute",
                    "steps",
                    "lr",
                    "final_train_loss",
                    "final_val_loss",
                    "wall_time_s",
                    "status",
                    "cached",
                )
            }
        )
        for r in rows
    ]
    create_table_artifact(
        table=table, key=artifact_key("scaling", "runs"), description="scaling: one row per training run"
    )
    laws = json.loads((out / "laws.json").read_text())
    create_table_artifact(
        table=laws, key=artifact_key("scaling", "laws"), description="scaling: fitted laws with intervals"
    )
    md = (out / "laws.md").read_text() + "\n" + image_markdown(out / "isoflop.png", "IsoFLOP profiles and N_opt vs C")
    create_markdown_artifact(
        markdown=md,
        key=artifact_key("scaling", "recommendation"),
        description="scaling: verdict and recommendation for the target budget, plot",
    )
    publish_stage(manifest, text_field=None, extra_md=markdown_table(table[:50]))
