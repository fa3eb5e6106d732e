"""Prefect tasks of the extract stage: one archive file (or slice) → one Parquet shard.

Reads: a WARC/WET/ARC file or URL (``shard["location"]``, bytes ``[start, end)``).
Writes: ``<root>/extract/<fingerprint>/part-NNNNN.parquet`` (+ rejects, + ``.done.json``
marker) through the stage contract; ``commit_extract`` writes ``_manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from lm.data.ingest import DOC_SCHEMA, ExtractConfig, extract_documents, max_block_bytes, shard_label
from lm.data.remote import CC_BASE_URL, INDEX_PREFIX, HttpOptions, RemoteError
from lm.data.shards import DiskFullError, Stage, source_fingerprint
from lm.data.warc import iter_file

STAGE = "extract"
VERSION = "1"  # bump when the code changes what the stage writes
TASK_RETRIES = 2
PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # inputs at least this big get a progress artifact
PROGRESS_EVERY_S = 5.0


def plan_digest(shards: list[dict]) -> str:
    """Identity of a shard plan: each shard's location and byte range, and each input's
    identity (local files by size and mtime). Tasks get this short digest, not the plan."""
    plan = [
        [s["location"], s["start"], s["end"], s.get("base_url"), source_fingerprint(s["location"].removeprefix(INDEX_PREFIX))]
        for s in shards
    ]
    return hashlib.sha256(json.dumps(plan, separators=(",", ":")).encode()).hexdigest()


def extract_stage(root: str | Path, cfg: ExtractConfig, plan: str) -> Stage:
    """The stage directory for a plan digest and settings (same arguments → same fingerprint)."""
    return Stage(root, STAGE, version=VERSION, config={**cfg.model_dump(), "plan": plan})


def _retry_transient(task, task_run, state) -> bool:
    """Retry network trouble, not missing files or bugs."""
    try:
        # security-ok: this task run's own failed state, in memory (the exception it raised), not a stored record
        state.result()
    except (FileNotFoundError, DiskFullError):  # a full disk does not empty itself in seconds
        return False
    except (RemoteError, OSError, TimeoutError):
        return True
    except Exception:  # noqa: BLE001 - a bug reruns the same way: do not retry it
        return False
    return False


def _last_attempt() -> bool:
    ctx = TaskRunContext.get()
    return ctx is None or ctx.task_run.run_count > TASK_RETRIES


# NO_CACHE: the stage contract (markers, manifest, fingerprint) decides what is already done.
@task(retries=TASK_RETRIES, retry_delay_seconds=[2, 10], retry_condition_fn=_retry_transient,
      task_run_name="extract-{index:05d}", cache_policy=NO_CACHE)
def extract_shard(root: str, cfg: ExtractConfig, plan: str, index: int, shard: dict, http: HttpOptions | None = None) -> str:
    """Extract ``shard`` (number ``index`` of the plan with digest ``plan``); skip it if its
    marker exists. Returns the marker path."""
    log = get_run_logger()
    stage = extract_stage(root, cfg, plan)
    if stage.shard_done(index):
        log.info("shard %d already done: %s", index, stage.marker_path(index))
        return str(stage.marker_path(index))
    on_progress = _progress_reporter(shard) if (shard["size"] or 0) >= PROGRESS_MIN_BYTES else None
    with stage.open_shard(index, schema=DOC_SCHEMA, source=shard_label(shard)) as w:
        # Test hook: stall with the shard unfinished, so a test can kill the worker mid-shard.
        if stall := float(os.environ.get("LMPIPE_TEST_SHARD_STALL_S", "0")):
            time.sleep(stall)
        records = iter_file(shard["location"], start=shard["start"], end=shard["end"], http=http,
                            max_block_bytes=max_block_bytes(cfg), base_url=shard.get("base_url") or CC_BASE_URL,
                            on_progress=on_progress)
        try:
            for out in extract_documents(records, cfg):
                w.count_in()
                if out.status == "kept":
                    w.write(out.row)
                elif out.status == "rejected":
                    w.reject(out.row, out.why)
                else:
                    w.fail(out.why, out.row["source"])
        except DiskFullError:
            raise  # our output did not fit: not the source's fault, never counted as a failed source
        except FileNotFoundError as e:  # a remote 404: nothing to retry, count the file as lost
            log.error("%s", e)
            w.count_in()
            w.fail("source_not_found", shard["location"])
        except (RemoteError, OSError) as e:
            if not _last_attempt():
                raise  # let Prefect retry the shard from scratch
            log.error("giving up on %s after %d attempts: %s", shard["location"], TASK_RETRIES + 1, e)
            w.count_in()
            w.fail("source_error", shard["location"])
    return str(stage.marker_path(index))


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
def commit_extract(root: str, cfg: ExtractConfig, shards: list[dict]) -> str:
    """Write the stage manifest from the shard markers (refuses if a shard is missing)."""
    stage = extract_stage(root, cfg, plan_digest(shards))
    sources = sorted({s["location"] for s in shards})
    return str(stage.commit(num_shards=len(shards), extra={"sources": sources}))
