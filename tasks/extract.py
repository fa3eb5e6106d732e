"""Prefect tasks of the extract stage (defined in ``lm.data.stages``): retries, progress.

Reads: a WARC/WET/ARC file or URL (``shard["location"]``, bytes ``[start, end)``).
Writes: ``<root>/extract/<fingerprint>/part-NNNNN.parquet`` (+ rejects, + ``.done.json``
marker); ``commit_extract`` writes ``_manifest.json``.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from lm import faults
from lm.data import stages
from lm.data.ingest import ExtractConfig, shard_label
from lm.data.remote import HttpOptions, RemoteError
from lm.data.shards import DiskFullError
from lm.data.stages import extract_stage, plan_digest  # noqa: F401 (the flow's names for the stage)

TASK_RETRIES = 2
PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # inputs at least this big get a progress artifact
PROGRESS_EVERY_S = 5.0


def _retry_transient(task, task_run, state) -> bool:
    """Retry network trouble, not missing files or bugs."""
    try:
        # security-ok: this task run's own failed state, in memory (the exception it raised), not a stored record
        state.result()
    except (FileNotFoundError, DiskFullError):  # a full disk does not empty itself in seconds
        return False
    except (RemoteError, OSError, TimeoutError):
        return True
    except Exception:  # a bug reruns the same way: do not retry it
        return False
    return False


def _last_attempt() -> bool:
    ctx = TaskRunContext.get()
    return ctx is None or ctx.task_run.run_count > TASK_RETRIES


# NO_CACHE: the stage contract (markers, manifest, fingerprint) decides what is already done.
@task(
    retries=TASK_RETRIES,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_retry_transient,
    task_run_name="extract-{index:05d}",
    cache_policy=NO_CACHE,
)
def extract_shard(
    root: str, cfg: ExtractConfig, plan: str, index: int, shard: dict, http: HttpOptions | None = None
) -> str:
    """Extract ``shard`` (number ``index`` of the plan with digest ``plan``); returns the marker path."""
    on_progress = _progress_reporter(shard) if (shard["size"] or 0) >= PROGRESS_MIN_BYTES else None
    return stages.extract_shard(
        root,
        cfg,
        plan,
        index,
        shard,
        http,
        on_progress=on_progress,
        on_open=faults.shard_stall,
        give_up=_last_attempt(),
        log=get_run_logger(),
    )


def _progress_reporter(shard: dict):
    """A callback for the reader that keeps a progress artifact (bytes read / slice size)."""
    total = (shard["end"] or shard["size"]) - shard["start"]
    artifact_id = create_progress_artifact(0.0, description=f"extract: {shard_label(shard)}")
    last = [0.0]

    def report(nbytes: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            update_progress_artifact(artifact_id, min(100.0, 100.0 * nbytes / max(total, 1)))

    return report


@task(task_run_name="commit-extract", cache_policy=NO_CACHE)
def commit_extract(root: str, cfg: ExtractConfig, shards: list[dict], notes: list[str] | None = None) -> str:
    """Write the stage manifest from the shard markers (refuses if a shard is missing)."""
    return stages.commit_extract(root, cfg, shards, notes)
