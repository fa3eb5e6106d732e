"""Run a flow in a subprocess and SIGKILL its whole process group at a chosen point.

The kill tests (test_sigkill*.py) start ``python -m flows.cli run <flow> --config <yaml>`` in
its own session, watch the artifact root, and kill the group when a seed-drawn condition
holds: "stage S has k finished shards" (k from the seed) or "stage S's directory exists,
plus a random delay". Then they rerun and compare the outputs with an uninterrupted run.

Helpers here read the stage contract only through the file system (``*.done.json`` markers,
``_manifest.json``), like a person looking at the output directory would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.01


def flow_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a flow subprocess: this test's Prefect API and the repo on the path."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return {**env, **(extra or {})}


@dataclass
class KillResult:
    killed: bool  # False: the flow finished before the condition held
    returncode: int
    seconds: float
    where: str  # what the condition saw when it fired ("" when not killed)


def run_flow(
    flow: str,
    config: dict,
    cfg_path: Path,
    *,
    kill_when: Callable[[], str | None] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 300.0,
    log_path: Path | None = None,
) -> KillResult:
    """Run ``flow`` with ``config`` in a new process group; SIGKILL the group as soon as
    ``kill_when()`` returns a truthy description. Returns what happened."""
    cfg_path.write_text(yaml.safe_dump(config))
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", flow, "--config", str(cfg_path)],
        cwd=REPO,
        env=env or flow_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    where = ""
    try:
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout_s:
                os.killpg(proc.pid, signal.SIGKILL)
                raise TimeoutError(f"flow {flow} ran past {timeout_s}s (log: {log_path})")
            if kill_when is not None and (hit := kill_when()):
                os.killpg(proc.pid, signal.SIGKILL)
                where = hit
                break
            time.sleep(POLL_S)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        if log_path:
            log.close()
        # A SIGKILLed flow may leave children (task processes) in its group: reap them.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return KillResult(bool(where), proc.returncode, time.monotonic() - t0, where)


# --------------------------------------------------------------------------- what is on disk


def stage_dirs(root: Path, stage: str) -> list[Path]:
    return sorted(p for p in (root / stage).glob("*") if p.is_dir())


def done_markers(root: Path, stage: str) -> int:
    return sum(len(list(d.glob("part-*.done.json"))) for d in stage_dirs(root, stage))


def stage_complete(root: Path, stage: str) -> bool:
    return any((d / "_manifest.json").exists() for d in stage_dirs(root, stage))


def _new_files(root: Path, stage: str, since: float, pattern: str = "*") -> int:
    """Files matching ``pattern`` in the stage's directories written after ``since`` (wall clock):
    what this run did, not what an earlier (killed) run left."""
    n = 0
    for d in stage_dirs(root, stage):
        for p in d.glob(pattern):
            try:
                n += p.stat().st_mtime >= since
            except FileNotFoundError:  # a temporary renamed away meanwhile
                pass
    return n


def after_markers(root: Path, stage: str, k: int, delay_s: float = 0.0) -> Callable[[], str | None]:
    """A kill condition: this run finished ``k`` shards of ``stage`` (then wait ``delay_s``)."""
    since, seen = time.time(), [None]

    def check() -> str | None:
        if seen[0] is None:
            if _new_files(root, stage, since, "part-*.done.json") >= k or stage_complete(root, stage):
                seen[0] = time.monotonic()
            return None
        if time.monotonic() - seen[0] >= delay_s:
            return f"{stage}: after {k} new shard(s) + {delay_s:.2f}s"
        return None

    return check


def after_start(root: Path, stage: str, delay_s: float) -> Callable[[], str | None]:
    """A kill condition: ``delay_s`` seconds after this run first wrote into the stage's directory."""
    since, seen = time.time(), [None]

    def check() -> str | None:
        if seen[0] is None:
            # A directory's mtime moves when this run creates it or a file in it (temporaries too).
            touched = any(d.stat().st_mtime >= since for d in stage_dirs(root, stage))
            if touched or stage_complete(root, stage):
                seen[0] = time.monotonic()
            return None
        if time.monotonic() - seen[0] >= delay_s:
            return f"{stage}: {delay_s:.2f}s after this run started writing it"
        return None

    return check


def landed_mid_stage(root: Path, stage: str) -> bool:
    """After a kill: the stage has a directory but no manifest (the kill interrupted it)."""
    return bool(stage_dirs(root, stage)) and not stage_complete(root, stage)


# --------------------------------------------------------------------------- comparing outputs

# Fields of a marker or manifest that record when/how long, not what: left out of comparisons
# (so are keys ending in _seconds or _time_s).
TIMING_KEYS = {
    "seconds",
    "finished_at",
    "saved_at",
    "timings",
    "manifest_sha256",
    "marker_sha256",
    "meta_sha256",
    "_path",
    "manifest_hmac",
    "marker_hmac",
}  # signatures: each root has its own key


def _strip(obj):
    if isinstance(obj, dict):
        return {
            k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS and not k.endswith(("_seconds", "_time_s"))
        }
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def stage_snapshot(stage_dir: Path, *, root: Path | None = None, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """Every file of a finished stage directory: data files as bytes, JSON without timings
    (and with ``root`` written as ``<root>``, so runs under two roots compare equal).
    Hidden files (temporaries) are included, so a leftover is a difference."""
    out: dict[str, object] = {}
    for p in sorted(stage_dir.rglob("*")):
        if not p.is_file() or any(p.match(s) for s in skip):
            continue
        rel = str(p.relative_to(stage_dir))
        if p.suffix == ".json":
            text = p.read_text()
            if root is not None:
                text = text.replace(str(Path(root).resolve()), "<root>").replace(str(root), "<root>")
            out[rel] = _strip(json.loads(text))
        else:
            out[rel] = p.read_bytes()
    return out


def diff_snapshots(want: dict, got: dict) -> list[str]:
    """Names of files that differ, are missing or are extra (empty list = identical)."""
    return sorted({k for k in want.keys() | got.keys() if want.get(k) != got.get(k)})


def ids_of(manifest_path: str | Path, column: str = "id", kind: str = "shards") -> list:
    """All values of ``column`` in a finished stage's shards (or rejects), in order."""
    from lm.data.shards import read_manifest, shard_paths

    return [
        v
        for p in shard_paths(read_manifest(manifest_path), kind)
        for v in pq.read_table(p, columns=[column]).column(column).to_pylist()
    ]


def first_differences(a, b, path: str = "", limit: int = 5) -> list[str]:
    """Where two snapshot values differ (dotted paths), for assertion messages."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(a.keys() | b.keys(), key=str):
            if a.get(k) != b.get(k):
                out += first_differences(a.get(k), b.get(k), f"{path}.{k}", limit)
            if len(out) >= limit:
                break
        return out[:limit]
    if isinstance(a, bytes) or isinstance(b, bytes):
        return [f"{path}: bytes differ ({len(a or b'')} vs {len(b or b'')})"]
    return [f"{path}: {str(a)[:120]!r} != {str(b)[:120]!r}"]
