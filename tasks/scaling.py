"""Prefect tasks of the scaling sweep: thin wrappers around ``lm.scaling.stage``.

``train_scaling_run`` trains one planned run (or reads its cached result), logging its progress
from the run's metrics.jsonl; ``fit_scaling`` writes the ``scaling`` stage (runs table, fits,
verdict, plots; see lm/scaling/stage.py) and returns its manifest path.
"""

from __future__ import annotations

from prefect import task

from lm.scaling.stage import ScalingConfig, cached_result, execute_run, fit_stage, run_dir
from tasks.progress import Progress, tail_metrics


@task(task_run_name="train-{run[d_model]}x{run[num_layers]}-C{run[budget]:.2g}")
def train_scaling_run(run: dict, corpus: dict, root: str, device: str, cpu_threads: int) -> dict:
    """Train one run of the sweep (or read its cached result); returns its runs-table row."""
    if cached_result(root, run) is not None:
        return execute_run(run, corpus, root=root, device=device, cpu_threads=cpu_threads)
    # Unkeyed: each run's progress artifact sits on its own task run; the sweep's is keyed.
    progress = Progress(f"run {run['run_id'][:8]}", run["steps"], keyed=False, lines=5)
    with progress, tail_metrics(run_dir(root, run["run_id"]) / "metrics.jsonl", progress):
        row = execute_run(run, corpus, root=root, device=device, cpu_threads=cpu_threads)
    progress.close()
    return row


@task
def fit_scaling(rows: list[dict], config: ScalingConfig, corpus: dict, plan_notes: list[str]) -> str:
    """Write the runs table, fit both approaches, judge and plot them; returns the stage manifest path."""
    return str(fit_stage(rows, config, corpus, plan_notes))
