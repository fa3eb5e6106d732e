"""Prefect tasks of the scaling sweep: one training run, and the fits over the runs table.

``train_scaling_run`` trains one planned run into ``<root>/scaling-runs/<run fp>/`` (or reads
its cached result). ``fit_scaling`` writes the ``scaling`` stage, ``<root>/scaling/<fp>/``::

    part-00000.parquet   the runs table (one row per planned run: shape, N, D, C, losses, wall time, status)
    fits.json            both fits, notes and the recommendation
    laws.md              the fitted-law table and the recommendation, as markdown
    isoflop.png          IsoFLOP profiles and N_opt vs C
    _manifest.json       (written last)
"""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
from prefect import task

from lm.data.shards import Stage, atomic_write_json
from lm.scaling.report import fit_runs, plot_isoflop, recommendation_markdown
from lm.scaling.sweep import ScalingConfig, execute_run
from tasks.artifacts import markdown_table

STAGE_VERSION = "1"
RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("budget", pa.float64()), ("target_params", pa.int64()),
    ("d_model", pa.int64()), ("num_layers", pa.int64()), ("num_heads", pa.int64()), ("d_ff", pa.int64()),
    ("params", pa.int64()), ("total_params", pa.int64()), ("tokens", pa.int64()), ("compute", pa.float64()),
    ("steps", pa.int64()), ("lr", pa.float64()), ("final_train_loss", pa.float64()), ("final_val_loss", pa.float64()),
    ("wall_time_s", pa.float64()), ("status", pa.string()), ("note", pa.string()),
])


@task(task_run_name="train-{run[d_model]}x{run[num_layers]}-C{run[budget]:.2g}")
def train_scaling_run(run: dict, corpus: dict, root: str, device: str, cpu_threads: int) -> dict:
    """Train one run of the sweep (or read its cached result); returns its runs-table row."""
    return execute_run(run, corpus, root=root, device=device, cpu_threads=cpu_threads)


def stage_for(config: ScalingConfig, corpus: dict, rows: list[dict]) -> Stage:
    # The fits are a function of the sweep config, the corpus and the runs' outcomes (a failed
    # run that succeeds on a rerun must refit): all three go into the fingerprint.
    # Where and how runs execute (root, device, threads, task runner) does not change what they compute.
    cfg = config.model_dump(exclude={"root", "device", "cpu_threads", "max_parallel_runs", "runner"})
    cfg["corpus_fingerprint"] = corpus["fingerprint"]
    cfg["runs"] = sorted(f"{r['run_id']}:{r['status']}" for r in rows)
    return Stage(config.root, "scaling", version=STAGE_VERSION, config=cfg, inputs=[corpus["manifest"]])


@task
def fit_scaling(rows: list[dict], config: ScalingConfig, corpus: dict, plan_notes: list[str]) -> str:
    """Write the runs table, fit both approaches, plot; returns the stage manifest path."""
    stage = stage_for(config, corpus, rows)
    if stage.is_complete():
        return str(stage.manifest_path)
    with stage.open_shard(0, schema=RUNS_SCHEMA, source=corpus["manifest"]) as w:
        for r in rows:
            w.count_in()
            w.add_count(f"runs_{r['status']}")
            w.write({f.name: r.get(f.name) for f in RUNS_SCHEMA})
    fits = fit_runs(
        [r for r in rows if r["status"] != "skipped"], target_budget=config.target_budget,
        context_length=config.context_length, vocab_size=corpus["vocab_size"], aspect_ratio=config.aspect_ratio,
        fit_on=config.fit_on, num_bootstrap=config.num_bootstrap, confidence=config.confidence, seed=config.seed,
    )
    fits.notes = plan_notes + fits.notes
    plot_isoflop(rows, fits, stage.path / "isoflop.png", fit_on=config.fit_on)
    summary = fits.to_json()
    atomic_write_json(stage.path / "fits.json", summary)
    laws = fits.law_rows()
    (stage.path / "laws.md").write_text("# Fitted laws\n\n" + markdown_table(laws) + "\n" + recommendation_markdown(fits))
    atomic_write_json(stage.path / "laws.json", laws)
    return str(stage.commit(num_shards=1, extra={"summary": summary}))


def finite_or_none(row: dict) -> dict:
    """Table artifacts are JSON: NaN becomes None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def stage_dir(manifest_path: str) -> Path:
    return Path(manifest_path).parent
