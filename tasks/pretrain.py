"""Pretraining tasks: thin Prefect wrappers around the pretrain stage of ``lm.train.stage``.

What each step reads and writes, the config and the fingerprint are documented there; here
each step becomes a task (the flow sets the training task's retries from ``config.retries``,
and each retry resumes from the last checkpoint) and logs to the Prefect logger; the training
task follows the trainer's metrics.jsonl into a progress artifact (tasks/progress.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task

from lm.train.stage import PretrainConfig, byte_tokenize, finalize, pretrain_stage, run_training
from tasks.progress import Progress, tail_metrics

__all__ = ["PretrainConfig", "byte_tokenize_task", "finalize_task", "pretrain_stage", "train_task"]


@task(name="byte-tokenize")
def byte_tokenize_task(text_file: str, root: str, val_fraction: float) -> str:
    """A text file as byte-level token shards (train + val); returns the manifest path."""
    return byte_tokenize(text_file, root, val_fraction, log=get_run_logger().info)


@task(name="pretrain-train")
def train_task(config: PretrainConfig, tokens_manifest: str, run_dir: str) -> dict:
    """One training attempt (retries are set by the flow from config.retries)."""
    logger = get_run_logger()
    started = time.time()
    progress = Progress("pretrain", config.train.total_steps())  # live metrics from the trainer's metrics.jsonl
    with progress, tail_metrics(Path(run_dir) / "metrics.jsonl", progress):
        summary = run_training(config, tokens_manifest, run_dir, log=logger.info)
    progress.finish("Pretraining", note=f"status {summary['status']}")
    logger.info(
        "training %s after %.0f s: %s",
        summary["status"],
        time.time() - started,
        {k: summary[k] for k in ("steps", "final_train_loss", "final_val_loss")},
    )
    return summary


@task(name="pretrain-finalize")
def finalize_task(config: PretrainConfig, tokens_manifest: str, summary: dict) -> str:
    """Loss table, loss/throughput plot, samples, then the stage manifest (written last). Returns its path."""
    return finalize(config, tokens_manifest, summary, log=get_run_logger().warning)
