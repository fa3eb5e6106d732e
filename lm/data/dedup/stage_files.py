"""Files the dedup stages read and write: input shards, spill directories, work arrays.

* ``input_shard``: a finished stage's shard, checksum-verified; ``parquet_file``: one opened to
  read chosen row groups or columns (size-checked: its stage was verified before).
* ``spill_dir``: a private local directory for one task's spill files (``KeySpill``), removed
  when the task ends, also when it fails (a disk that fills mid-spill leaves nothing behind).
* ``save_arrays`` / ``load_arrays``: numpy arrays a step hands to a later step of the same
  stage (the features of paired documents, verified pairs), stored in the stage directory
  (local or remote) under ``work/``: each ``.npy`` renamed into place when whole, then a
  marker with their sizes and sha256, so a retried task redoes only steps without a marker.
  Local files are memory-mapped; remote ones are fetched once into the local cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lm.data.manifest import Manifest, read_manifest
from lm.data.nospace import reraise_disk_full
from lm.data.stage_io import read_marker, write_marker
from lm.data.storage import RemotePath, ShardCorruptError, commit_file, file_sha256, local_copy, local_scratch, tmp_name


def num_shards(manifest_path: str) -> int:
    return read_manifest(manifest_path).num_shards


def input_shard(manifest_path: str, index: int, columns: list[str] | None = None) -> tuple[pa.Table, str]:
    """Shard ``index`` of a finished stage (checksum-verified) and its path."""
    m = read_manifest(manifest_path)
    return m.read_shard(index, columns), str(m.shard_path(index))


def parquet_file(path: Path | RemotePath, size: int | None) -> pq.ParquetFile:
    """A shard of a stage checked complete in this run, opened to read some of its row groups
    or columns. ``Stage.is_complete`` (run on every input stage before the reduction that reads
    it) verified each file's sha256; a reader that takes part of a file checks its size only,
    so P range tasks over S shards do not hash every shard P times."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ShardCorruptError(
            f"shard {path} has {actual} bytes, {size} recorded in its manifest; rerun the stage that wrote it"
        )
    return pq.ParquetFile(path.open("rb") if isinstance(path, RemotePath) else path)


def row_offsets(manifest: Manifest) -> np.ndarray:
    """First global document number of each shard, then the total: int64[num_shards + 1]."""
    return np.concatenate([[0], np.cumsum([s.num_rows for s in manifest.shards])]).astype(np.int64)


def text_bytes(table: pa.Table) -> int:
    """UTF-8 bytes of the ``text`` column (nulls count 0)."""
    if not table.num_rows:
        return 0
    return int(pc.sum(pc.binary_length(pc.cast(table.column("text"), pa.binary()))).as_py() or 0)


@contextlib.contextmanager
def spill_dir(stage_path: Path | RemotePath, base: str | None, label: str) -> Iterator[Path]:
    """A fresh local directory for one task's spill files, removed afterwards.

    Under ``base`` when given; else in the stage directory of a local root (the disk meant for
    the data) or the system's temporary directory for a remote root. A directory left by a
    killed run of the same task is removed first."""
    if base:
        parent = Path(base)
    elif isinstance(stage_path, Path):
        parent = stage_path
    else:
        parent = Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".spill-{stage_path.parent.name}-{stage_path.name}-{label}-"
    for stale in parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _marker(work: Path | RemotePath, name: str) -> Path | RemotePath:
    # In the stage directory itself (``work`` is ``<stage dir>/work``), so it is signed with the
    # root's key like every other marker (stagekey finds the root two levels above a marker).
    return work.parent / f"work-{name}.done.json"


def save_arrays(work: Path | RemotePath, name: str, **arrays: np.ndarray) -> None:
    """Store ``arrays`` as ``work/<name>.<key>.npy`` (each whole or absent), then the marker."""
    work.mkdir(parents=True, exist_ok=True)
    remote = not isinstance(work, Path)
    scratch = local_scratch("lmpipe-work-") if remote else work
    entries = {}
    try:
        for key, arr in arrays.items():
            final = work / f"{name}.{key}.npy"
            tmp = scratch / tmp_name(final.name)
            try:
                with reraise_disk_full(final), open(tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(arr))
                    f.flush()
                    os.fsync(f.fileno())
                entries[key] = {"name": final.name, "bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}
                with reraise_disk_full(final):
                    commit_file(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
        write_marker(_marker(work, name), {"arrays": entries})
    finally:
        if remote:
            shutil.rmtree(scratch, ignore_errors=True)


def arrays_done(work: Path | RemotePath, name: str) -> bool:
    """True when ``name``'s marker is intact and its files have the recorded sizes."""
    try:
        entries = read_marker(_marker(work, name))["arrays"]
        return all(
            (work / e["name"]).exists() and (work / e["name"]).stat().st_size == e["bytes"] for e in entries.values()
        )
    except (FileNotFoundError, ShardCorruptError, KeyError, TypeError):
        return False


def load_arrays(work: Path | RemotePath, name: str) -> dict[str, np.ndarray]:
    """The arrays ``save_arrays`` stored under ``name``, memory-mapped (read-only)."""
    entries = read_marker(_marker(work, name))["arrays"]
    out = {}
    for key, e in entries.items():
        path = work / e["name"]
        local = local_copy(path, e["sha256"])
        if isinstance(path, Path) and local.stat().st_size != e["bytes"]:
            raise ShardCorruptError(f"{path} has {local.stat().st_size} bytes, {e['bytes']} recorded; rerun the stage")
        try:
            out[key] = np.load(local, mmap_mode="r")
        except ValueError:  # an empty array cannot be mapped
            out[key] = np.load(local)
    return out


def remove_tree(path: Path | RemotePath) -> None:
    """Remove a directory of work files (local or remote); missing is fine."""
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.fs.rm(path.key, recursive=True)


def write_local_then_commit(final: Path | RemotePath, write) -> dict:
    """Build ``final`` through a hidden temporary (local) with ``write(file)``, fsync it and
    publish it whole; returns its size and sha256."""
    remote = not isinstance(final, Path)
    scratch = local_scratch("lmpipe-work-") if remote else final.parent
    tmp = scratch / tmp_name(final.name)
    try:
        with reraise_disk_full(final), open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        digest = file_sha256(tmp)
        with reraise_disk_full(final):
            commit_file(tmp, final)
        return {"name": final.name, "bytes": size, "sha256": digest}
    finally:
        tmp.unlink(missing_ok=True)
        if remote:
            shutil.rmtree(scratch, ignore_errors=True)
