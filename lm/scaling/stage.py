"""The ``scaling`` stage in plain Python (no Prefect): train an IsoFLOP sweep, fit the laws, recommend.

Reads a token-shard directory (``config.corpus``, from the tokenize stage) or a text file
byte-tokenized once (``config.text``). Each planned run (lm.scaling.sweep.plan_runs) trains into
``<root>/scaling-runs/<run fingerprint>/``::

    result.json        the run's row of the runs table (written last: the completion marker)
    metrics.jsonl, summary.json, checkpoints/   what lm.train.trainer writes (a killed run resumes)

so rerunning a sweep trains nothing, and extending it (one more budget, one more size) trains
only the new points. A run that raises is reported with status "failed" and is retried on the
next sweep; a run whose loss went NaN ("diverged") is kept, and left out of the fits.
The fits are the ``scaling`` stage, ``<root>/scaling/<fingerprint>/``::

    part-00000.parquet   the runs table (one row per planned run: shape, N, D, C, losses, wall time, status)
    fits.json            both fits, notes, the verdict and the recommendation
    laws.md / laws.json  the fitted-law table and the recommendation (markdown), the table (JSON)
    isoflop.png          IsoFLOP profiles and N_opt vs C
    curves.png           every run's training loss against tokens
    _manifest.json       (written last)

    from lm.scaling.stage import run_scaling
    run_scaling(ScalingConfig(text="corpus.txt", budgets="auto", model_sizes=[16000, 33000, 53000], target_budget=1e12))

The Prefect flow (flows/scaling.py) runs the same functions, each training run as a task.
Version 2 of the stage adds the verdict (degenerate fits and unbracketed sweeps are not
presented as results) and curves.png; its runs (``scaling-runs``, version 1) are reused.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from lm.data.shards import Stage, atomic_write_json
from lm.scaling.plots import plot_isoflop, plot_run_curves
from lm.scaling.report import fit_runs, recommendation_markdown
from lm.scaling.sweep import RUN_STAGE, ScalingConfig, byte_corpus, corpus_info, plan_runs, resolve_budgets

STAGE_VERSION = "2"
RESULT_NAME = "result.json"
RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("budget", pa.float64()),
        ("target_params", pa.int64()),
        ("d_model", pa.int64()),
        ("num_layers", pa.int64()),
        ("num_heads", pa.int64()),
        ("d_ff", pa.int64()),
        ("params", pa.int64()),
        ("total_params", pa.int64()),
        ("tokens", pa.int64()),
        ("compute", pa.float64()),
        ("steps", pa.int64()),
        ("lr", pa.float64()),
        ("final_train_loss", pa.float64()),
        ("final_val_loss", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("status", pa.string()),
        ("note", pa.string()),
    ]
)
# How and where runs execute does not change what they compute; auto-budget settings matter
# only through the budgets they resolve to (which are fingerprinted).
_NOT_FINGERPRINTED = {"root", "device", "cpu_threads", "max_parallel_runs", "runner", "num_budgets", "max_epochs"}

__all__ = [
    "RUNS_SCHEMA",
    "ScalingConfig",
    "execute_run",
    "fit_stage",
    "plan_sweep",
    "run_dir",
    "run_scaling",
    "scaling_stage",
]


def run_dir(root: str | Path, run_id: str) -> Path:
    return Path(root) / RUN_STAGE / run_id


def cached_result(root: str | Path, run: dict) -> dict | None:
    path = run_dir(root, run["run_id"]) / RESULT_NAME
    if path.exists():
        return json.loads(path.read_text())
    return None


def execute_run(run: dict, corpus: dict, *, root: str | Path, device: str = "auto", cpu_threads: int = 1) -> dict:
    """Train one planned run (or read its cached result); returns its runs-table row + ``cached``."""
    done = cached_result(root, run)
    if done is not None:
        return {**done, "cached": True}
    import torch

    from lm.train.trainer import TrainConfig, train

    out = run_dir(root, run["run_id"])
    row = {k: v for k, v in run.items() if k != "train"}
    started = time.time()
    threads = torch.get_num_threads()
    try:
        cfg = TrainConfig(
            **run["train"],
            data=corpus["dir"],
            out_dir=str(out),
            device=device,
            eval_interval=run["steps"],
            checkpoint_interval=run["steps"],
            keep_last=1,
            log_interval=max(1, run["steps"] // 5),
        )
        if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
            torch.set_num_threads(cpu_threads)  # tiny matmuls: more threads only contend
        summary = train(cfg)
    except Exception as e:  # one bad run must not sink the sweep; it is retried next time
        return {
            **row,
            "final_train_loss": math.nan,
            "final_val_loss": math.nan,
            "wall_time_s": round(time.time() - started, 3),
            "status": "failed",
            "note": f"{type(e).__name__}: {e}"[:500],
            "trace": traceback.format_exc()[-2000:],
            "cached": False,
        }
    finally:
        torch.set_num_threads(threads)
    status = summary["status"]
    result = {
        **row,
        "final_train_loss": _loss(summary["final_train_loss"], status),
        "final_val_loss": _loss(summary["final_val_loss"], status),
        "wall_time_s": summary["wall_time_s"],
        "status": status,
        "note": "loss went non-finite: excluded from the fits" if status == "diverged" else "",
    }
    if status in ("completed", "diverged"):  # deterministic outcomes are cached; a time limit is not
        atomic_write_json(out / RESULT_NAME, result)
    return {**result, "cached": False}


def _loss(value, status: str) -> float:
    if status == "diverged" or value is None:
        return math.nan
    return float(value)


def plan_sweep(config: ScalingConfig) -> tuple[ScalingConfig, dict, list[dict], list[str]]:
    """(config with numeric budgets, corpus info, planned runs, notes).

    A bad corpus or an empty plan fails here, before any training.
    """
    corpus = corpus_info(config.corpus if config.corpus else byte_corpus(config.text, config.root))
    config, notes = resolve_budgets(config, corpus)
    runs, skipped = plan_runs(config, corpus)
    notes += skipped
    if not runs:
        raise ValueError(f"no runs to train: every (budget, size) pair was skipped ({'; '.join(notes)}); raise budgets")
    return config, corpus, runs, notes


def scaling_stage(config: ScalingConfig, corpus: dict, rows: list[dict]) -> Stage:
    """The fits' Stage: a function of the sweep config, the corpus and the runs' outcomes (a
    failed run that succeeds on a rerun must refit), so all three are fingerprinted."""
    if config.budgets == "auto":
        raise ValueError("resolve budgets='auto' first (plan_sweep): the stage fingerprints the budgets themselves")
    cfg = config.model_dump(exclude=_NOT_FINGERPRINTED)
    cfg["corpus_fingerprint"] = corpus["fingerprint"]
    cfg["runs"] = sorted(f"{r['run_id']}:{r['status']}" for r in rows)
    return Stage(config.root, "scaling", version=STAGE_VERSION, config=cfg, inputs=[corpus["manifest"]])


def fit_stage(rows: list[dict], config: ScalingConfig, corpus: dict, plan_notes: list[str]) -> Path:
    """Write the runs table, fit both approaches, judge the fits, plot; returns the stage manifest path."""
    stage = scaling_stage(config, corpus, rows)
    if stage.is_complete():
        return stage.manifest_path
    with stage.open_shard(0, schema=RUNS_SCHEMA, source=corpus["manifest"]) as w:
        for r in rows:
            w.count_in()
            w.add_count(f"runs_{r['status']}")
            w.write({f.name: r.get(f.name) for f in RUNS_SCHEMA})
    fits = fit_runs(
        [r for r in rows if r["status"] != "skipped"],
        target_budget=config.target_budget,
        context_length=config.context_length,
        vocab_size=corpus["vocab_size"],
        aspect_ratio=config.aspect_ratio,
        fit_on=config.fit_on,
        num_bootstrap=config.num_bootstrap,
        confidence=config.confidence,
        seed=config.seed,
    )
    fits.notes = plan_notes + fits.notes
    plot_isoflop(rows, fits, stage.path / "isoflop.png", fit_on=config.fit_on)
    plot_run_curves(
        rows,
        {r["run_id"]: run_dir(config.root, r["run_id"]) / "metrics.jsonl" for r in rows},
        stage.path / "curves.png",
    )
    summary = fits.to_json()
    atomic_write_json(stage.path / "fits.json", summary)
    laws = fits.law_rows()
    (stage.path / "laws.md").write_text(recommendation_markdown(fits, laws))
    atomic_write_json(stage.path / "laws.json", laws)
    return stage.commit(num_shards=1, extra={"summary": summary})


def run_scaling(config: ScalingConfig, *, on_run: Callable[[dict, int, int], None] | None = None) -> dict:
    """The whole stage, runs one after another in this process; ``on_run(row, done, total)`` after each.

    Returns what the flow returns: manifest path, run counts and the recommendation.
    """
    config, corpus, runs, notes = plan_sweep(config)
    rows = []
    for run in runs:
        rows.append(execute_run(run, corpus, root=config.root, device=config.device, cpu_threads=config.cpu_threads))
        if on_run is not None:
            on_run(rows[-1], len(rows), len(runs))
    manifest = fit_stage(rows, config, corpus, notes)
    return sweep_result(rows, manifest)


def sweep_result(rows: list[dict], manifest: str | Path) -> dict:
    """The sweep's outcome: counts, the manifest, the recommendation and the verdict on the fits."""
    fits = json.loads((Path(manifest).parent / "fits.json").read_text())
    trained = sum(not r.get("cached") for r in rows)
    return {
        "manifest": str(manifest),
        "runs": len(rows),
        "trained": trained,
        "cached": len(rows) - trained,
        "failed": sum(r["status"] == "failed" for r in rows),
        "recommendation": fits["recommendation"],
        "verdict": fits.get("verdict", {}),
    }
