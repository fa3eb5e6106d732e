"""Finished stage files: checksums, atomic writes, shard markers, manifests, shard readers.

The file-level half of the stage contract (``lm.data.shards`` re-exports all of it): how a
file is written so readers see it whole or not at all, how a shard marker and a manifest
check themselves, and how a finished stage is read back with every shard verified against
the sha256 its manifest records. Works on local paths and fsspec URLs (``lm.data.storage``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lm.data.nospace import DiskFullError, disk_full_error, no_room_errno
from lm.data.storage import RemotePath, as_path, write_bytes_atomic

MANIFEST_NAME = "_manifest.json"


class ShardCorruptError(RuntimeError):
    """A shard or manifest does not match the checksum or structure recorded for it."""




# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def file_sha256(path: str | os.PathLike | RemotePath, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    p = as_path(path)
    with (open(p, "rb") if isinstance(p, Path) else p.open("rb")) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fault_pause(index: int = 0) -> None:
    """Fault-injection hook: sleep ``$LMPIPE_TEST_SHARD_DELAY_S`` × (1 + index % 4) seconds
    (unset: no pause).

    Called between a shard's last row and its rename into place, so the kill tests
    (tests/reliability/) can SIGKILL a run while a shard is half-finished on disk; staggered
    by index so shards running in parallel still finish one after another."""
    if delay := float(os.environ.get("LMPIPE_TEST_SHARD_DELAY_S", "0") or 0):
        time.sleep(delay * (1 + index % 4))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        write_bytes_atomic(path, data)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if no_room_errno(e) is not None and not isinstance(e, DiskFullError):
            raise disk_full_error(path, e) from e
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_manifest(path: str | os.PathLike) -> dict:
    """Read a stage manifest (the file or its stage directory). Raises on a broken manifest."""
    path = as_path(path)
    if isinstance(path, RemotePath) and not path.name.endswith(".json"):
        path = path / MANIFEST_NAME  # a stage directory (no directory objects to ask about)
    elif isinstance(path, Path) and path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no stage manifest at {path}: the stage has not finished there")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardCorruptError(f"manifest {path} is not valid JSON ({e}); rerun the stage: it recomputes what is damaged") from e
    missing = {"stage", "fingerprint", "shards", "counts"} - set(manifest)
    if missing:
        raise ShardCorruptError(f"manifest {path} lacks {sorted(missing)}; rerun the stage: it recomputes what is damaged")
    digest = manifest.get("manifest_sha256")
    if digest is not None:
        body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
        if hashlib.sha256(_canonical_json(body).encode()).hexdigest() != digest:
            raise ShardCorruptError(f"manifest {path} does not match its checksum; rerun the stage: it recomputes what is damaged")
    manifest["_path"] = str(path)
    return manifest


def write_marker(path: str | os.PathLike, marker: Mapping[str, Any]) -> None:
    """Write a shard's completion marker with its own checksum (``marker_sha256``)."""
    body = {k: v for k, v in marker.items() if k != "marker_sha256"}
    atomic_write_json(path, {**body, "marker_sha256": hashlib.sha256(_canonical_json(body).encode()).hexdigest()})


def read_marker(path: str | os.PathLike) -> dict:
    """Read a shard marker; ShardCorruptError if it is not JSON or does not match its checksum."""
    try:
        marker = json.loads(as_path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardCorruptError(f"shard marker {path} is not valid JSON ({e}); rerun the stage: the shard is recomputed") from e
    digest = marker.pop("marker_sha256", None) if isinstance(marker, dict) else None
    if not isinstance(marker, dict) or (digest is not None and hashlib.sha256(_canonical_json(marker).encode()).hexdigest() != digest):
        raise ShardCorruptError(f"shard marker {path} does not match its checksum; rerun the stage: the shard is recomputed")
    return marker


def _check_file(path: Path, size: int | None, sha256: str | None) -> str | None:
    """Why ``path`` does not match the recorded size / sha256 (None when it does)."""
    if not path.exists():
        return f"{path} is missing"
    if size is not None and path.stat().st_size != size:
        return f"{path} has {path.stat().st_size} bytes, {size} recorded (truncated or changed)"
    if sha256 is not None and file_sha256(path) != sha256:
        return f"{path} does not match its recorded sha256 (corrupted or changed)"
    return None


def manifest_dir(manifest: Mapping | str | os.PathLike) -> Path | RemotePath:
    if isinstance(manifest, Mapping):
        return as_path(manifest["_path"]).parent
    p = as_path(manifest)
    if isinstance(p, RemotePath):
        return p.parent if p.name.endswith(".json") else p
    return p if p.is_dir() else p.parent


def shard_paths(manifest: Mapping | str | os.PathLike, kind: str = "shards") -> list[Path | RemotePath]:
    """Paths of a finished stage's output shards (``kind="rejects"`` for the rejects)."""
    m = manifest if isinstance(manifest, Mapping) else read_manifest(manifest)
    d = manifest_dir(m)
    return [d / s["name"] for s in m.get(kind, [])]


def read_shard(path: str | os.PathLike, expected_sha256: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet shard, verifying its checksum when one is given."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        return _read_remote_shard(path, expected_sha256, columns)
    if not path.exists():
        raise FileNotFoundError(f"shard {path} does not exist")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise ShardCorruptError(
            f"shard {path} does not match the checksum in its manifest (corrupted or changed "
            "after the stage finished); rerun the stage that wrote it: it recomputes the damaged shard"
        )
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardCorruptError(f"shard {path} is not readable Parquet ({e}); rerun the stage that wrote it") from e


def _read_remote_shard(path: RemotePath, expected_sha256: str | None, columns: list[str] | None) -> pa.Table:
    """One GET: the checksum is verified on exactly the bytes that are parsed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"shard {path} does not exist") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ShardCorruptError(
            f"shard {path} does not match the checksum in its manifest (corrupted or changed "
            "after the stage finished); delete the stage directory and rerun the stage"
        )
    try:
        return pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardCorruptError(f"shard {path} is not readable Parquet ({e})") from e


def read_shard_schema(path: str | os.PathLike | RemotePath) -> pa.Schema:
    """The Arrow schema of a Parquet shard, from its footer (a ranged read on a remote root)."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        with path.open("rb") as f:
            return pq.read_schema(f)
    return pq.read_schema(path)


def iter_stage_tables(manifest: Mapping | str | os.PathLike, kind: str = "shards", columns: list[str] | None = None, verify: bool = True) -> Iterator[pa.Table]:
    m = manifest if isinstance(manifest, Mapping) else read_manifest(manifest)
    d = manifest_dir(m)
    for s in m.get(kind, []):
        yield read_shard(d / s["name"], s.get("sha256") if verify else None, columns)


def iter_rows(manifest: Mapping | str | os.PathLike, kind: str = "shards", columns: list[str] | None = None) -> Iterator[dict]:
    for table in iter_stage_tables(manifest, kind, columns):
        yield from table.to_pylist()


def read_stage_table(manifest: Mapping | str | os.PathLike, kind: str = "shards", columns: list[str] | None = None) -> pa.Table:
    tables = list(iter_stage_tables(manifest, kind, columns))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def accounted(manifest: Mapping) -> bool:
    """Every input record is kept, rejected or failed (the 'nothing lost' invariant)."""
    c = manifest["counts"]
    return c["in"] == c["kept"] + sum(c["rejected"].values()) + sum(c["failed"].values())


# --------------------------------------------------------------------------- inspection


def describe(stage_dir: str | os.PathLike, num_samples: int = 3, width: int = 300) -> str:
    """A human summary of a finished stage: counts, lineage, shards and a few sample rows."""
    m = read_manifest(stage_dir)
    c = m["counts"]
    lines = [
        f"stage       {m['stage']}  (fingerprint {m['fingerprint']}, version {m.get('version')})",
        f"directory   {manifest_dir(m)}",
        f"committed   {m.get('timings', {}).get('committed_at')}",
        f"records     in {c['in']:,}  kept {c['kept']:,}  rejected {sum(c['rejected'].values()):,}  "
        f"failed {sum(c['failed'].values()):,}",
    ]
    for reason, n in c["rejected"].items():
        lines.append(f"  rejected  {reason}: {n:,}")
    for kind, n in c["failed"].items():
        lines.append(f"  failed    {kind}: {n:,}")
    for k, v in c.items():
        if k not in {"in", "kept", "rejected", "failed"}:
            lines.append(f"  {k}: {v}")
    for i in m.get("inputs", []):
        lines.append(f"input       {i['stage']} {i['fingerprint']}  {i['path']}")
    for s in m.get("sources", [])[:5]:
        lines.append(f"source      {s}")
    total_bytes = sum(s["bytes"] for s in m["shards"])
    lines.append(f"shards      {len(m['shards'])} ({total_bytes:,} bytes)")
    if m.get("config"):
        lines.append(f"config      {json.dumps(m['config'], sort_keys=True)[:width]}")
    shown = 0
    # Sample rows from Parquet shards only (a token stage's shards are raw .bin arrays).
    parquet_only = {**m, "shards": [s for s in m["shards"] if s["name"].endswith(".parquet")]}
    for table in iter_stage_tables(parquet_only):
        for row in table.slice(0, num_samples - shown).to_pylist():
            shown += 1
            text = {k: (v[:width] + "…" if isinstance(v, str) and len(v) > width else v) for k, v in row.items()}
            lines.append(f"sample {shown}:  {json.dumps(text, ensure_ascii=False, default=str)}")
        if shown >= num_samples:
            break
    return "\n".join(lines)


def table_from_rows(rows: Iterable[Mapping], schema: pa.Schema | None = None) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)
