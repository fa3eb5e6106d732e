"""The stage contract: one writer for every stage's shards, per-shard completion, the manifest.

Every stage writes one directory::

    <root>/<stage>/<fingerprint>/part-00000.parquet … part-NNNNN.parquet   (or train-/val-NNNNN.bin)
                                /rejects-00000.parquet …   (rows dropped, with a reason)
                                /part-00000.done.json …    (per-shard stats: the completion marker)
                                /_manifest.json            (written last, atomically)

A shard is written through a :class:`ShardWriter` whose sinks (``lm.data.sinks``: Parquet rows,
or token ``.bin`` files) write hidden temporaries and rename them into place only when the
shard is finished, then its ``.done.json`` marker is written; so a killed run never leaves a
half shard and a retry redoes only the shards without a marker. ``commit()`` aggregates the
markers into ``_manifest.json``; a stage with an intact manifest is complete and is skipped.
Markers and manifests are checksummed and signed with the root's key (``lm.data.stagekey``);
the files they name must be plain names inside the stage directory (``lm.data.stage_io``).
Writers of one shard (or one commit) hold its lock (``lm.data.locks``): a second run is refused
with a message naming the first, and never deletes the first run's temporaries.

``root`` may be a local path or an fsspec URL (``s3://bucket/prefix``, ``memory://…``; see
``lm.data.storage``). Finished stages are read back with ``lm.data.manifest.Manifest``.

The fingerprint is a hash of the stage's declaration (``lm.data.fingerprint``): name, code
version, config, upstream fingerprints, and the files and environment it declares it reads.

Usage (what a task does, one shard at a time)::

    stage = Stage(root, "langid", version="1", config=cfg, inputs=[upstream], files={"lid_model": path})
    if not stage.is_complete():
        for i in range(Manifest.read(upstream).num_shards):
            if stage.shard_done(i):
                continue
            with stage.open_shard(i, schema=SCHEMA) as w:
                for row in rows:
                    w.count_in()
                    w.write(row)          # or w.reject(row, "too_short") / w.fail("decode", row_id)
        manifest_path = stage.commit(num_shards=n)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lm import faults
from lm.data import locks, stagekey
from lm.data.describe import describe
from lm.data.fingerprint import DeclaredInputs, fingerprint, source_fingerprint
from lm.data.manifest import (
    Manifest,
    accounted,
    iter_rows,
    iter_stage_tables,
    manifest_dir,
    read_manifest,
    read_shard,
    read_shard_schema,
    read_stage_table,
    shard_paths,
    table_from_rows,
)
from lm.data.nospace import DiskFullError, disk_full_error, no_room_errno, reraise_disk_full
from lm.data.sinks import Layout, Sink, parquet_layout, token_layout
from lm.data.stage_io import (
    MANIFEST_NAME,
    atomic_write_bytes,
    atomic_write_json,
    canonical_json,
    check_file,
    marker_files,
    now,
    read_marker,
    stage_file,
    write_marker,
    write_signed_json,
)
from lm.data.storage import RemotePath, ShardCorruptError, as_path, file_sha256

# Public names of the contract, importable from here while callers move to the modules above.
__all__ = [
    "MANIFEST_NAME",
    "DiskFullError",
    "Manifest",
    "ShardCorruptError",
    "ShardStats",
    "ShardWriter",
    "Stage",
    "StageBusyError",
    "accounted",
    "atomic_write_bytes",
    "atomic_write_json",
    "describe",
    "disk_full_error",
    "file_sha256",
    "fingerprint",
    "iter_rows",
    "iter_stage_tables",
    "manifest_dir",
    "no_room_errno",
    "parquet_layout",
    "read_manifest",
    "read_marker",
    "read_shard",
    "read_shard_schema",
    "read_stage_table",
    "reraise_disk_full",
    "shard_paths",
    "source_fingerprint",
    "table_from_rows",
    "token_layout",
    "validate_name",
    "write_marker",
]

StageBusyError = locks.StageBusyError
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_log = logging.getLogger(__name__)
_FAILED_IDS_KEPT = 100  # per shard, in the marker: enough to find the records, bounded
COMMIT_WAIT_S = 120.0  # a commit takes seconds: a second run waits for the first one's instead of failing


def validate_name(name: str, what: str = "stage name") -> str:
    """Stage names become path components: refuse anything that could leave the root."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: use 1-64 lowercase letters, digits, '_', '-', '.', "
            "starting with a letter or digit (it becomes a directory name under the root)"
        )
    return name


# --------------------------------------------------------------------------- writing one shard


@dataclass
class ShardStats:
    index: int
    rows_in: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    failed_ids: list = field(default_factory=list)
    extra: Counter = field(default_factory=Counter)  # stage-specific counters (e.g. emails masked)


class ShardWriter:
    """Writes one shard of a stage through its sinks. Use through ``Stage.open_shard``."""

    def __init__(self, stage: Stage, index: int, sinks: Mapping[str, Sink], source: str | None):
        self.stage, self.index, self.source = stage, index, source
        self.sinks = dict(sinks)
        self.stats = ShardStats(index)
        self._started = time.time()

    def count_in(self, n: int = 1) -> None:
        """Count ``n`` input records read (every one must end kept, rejected or failed)."""
        self.stats.rows_in += n

    def write(self, item: Any, to: str = "shard") -> None:
        """Keep one record: a row (Parquet layout) or a document's token ids (``to`` = its split)."""
        self.stats.kept += 1
        self.sinks[to].add(item)

    def reject(self, row: dict | None, reason: str) -> None:
        """Reject one record with ``reason``; the row goes to the rejects file when the layout has one."""
        self.stats.rejected[reason] += 1
        if row is not None and "rejects" in self.sinks:
            self.sinks["rejects"].add({**row, "reason": reason})

    def write_table(self, table: pa.Table) -> None:
        """Keep every row of ``table`` (as ``write`` per row, without a Python loop)."""
        self.stats.kept += table.num_rows
        self.sinks["shard"].add_table(table)

    def reject_table(self, table: pa.Table, reasons: str | pa.Array) -> None:
        """Reject every row of ``table`` with its reason (one string for all, or one per row)."""
        if isinstance(reasons, str):
            reasons = pa.array([reasons] * table.num_rows, pa.string())
        for reason, n in zip(*pc.value_counts(reasons).flatten()):
            self.stats.rejected[reason.as_py()] += n.as_py()
        self.sinks["rejects"].add_table(table.append_column("reason", reasons))

    def fail(self, kind: str, record_id: str | None = None) -> None:
        """Count a record that could not be processed (e.g. undecodable), with its id for the log."""
        self.stats.failed[kind] += 1
        if record_id is not None and len(self.stats.failed_ids) < _FAILED_IDS_KEPT:
            self.stats.failed_ids.append({"id": record_id, "kind": kind})

    def add_count(self, key: str, n: int = 1) -> None:
        self.stats.extra[key] += n

    def _finish(self) -> dict:
        s = self.stats
        marker: dict[str, Any] = {"index": self.index, "source": self.source}
        if any(sink.marker_key == "outputs" for sink in self.sinks.values()):
            marker["outputs"] = []
        for sink in self.sinks.values():
            entry = sink.finish()
            if sink.marker_key == "outputs":
                if entry is not None:
                    marker["outputs"].append(entry)
            else:
                marker[sink.marker_key] = entry
        marker |= {
            "rows_in": s.rows_in,
            "kept": s.kept,
            "rejected": dict(s.rejected),
            "failed": dict(s.failed),
            "failed_ids": s.failed_ids,
            "extra": dict(s.extra),
            "seconds": round(time.time() - self._started, 4),
            "finished_at": now(),
        }
        write_marker(self.stage.marker_path(self.index), marker)
        return marker

    def _abort(self) -> None:
        for sink in self.sinks.values():
            sink.abort()


# --------------------------------------------------------------------------- the stage


class Stage:
    """One stage's output directory under ``root``, identified by its fingerprint."""

    def __init__(
        self,
        root: str | os.PathLike,
        name: str,
        *,
        version: str,
        config: Mapping[str, Any],
        inputs: Sequence[str | os.PathLike] = (),
        sources: Sequence[str] = (),
        files: Mapping[str, str | os.PathLike] | None = None,
        env: Sequence[str] = (),
        lock_wait_s: float = 0.0,
    ):
        """The stage's declaration, from which its fingerprint is computed:

        ``version`` the stage code's version (bump it when the code changes what it writes);
        ``config`` every setting that changes the output; ``inputs`` upstream manifest paths
        (lineage); ``sources`` raw inputs (files by size and mtime, URLs as given); ``files``
        other files it reads (models, word lists) by role → path, identified by content hash;
        ``env`` environment variables that change what it computes. ``lock_wait_s``: how long
        a shard held by another run is waited for before refusing (default: refuse at once).
        """
        self.root = as_path(root)
        self.name = validate_name(name)
        self.version = str(version)
        self.config = json.loads(canonical_json(dict(config)))
        self.inputs = []
        for p in inputs:
            m = Manifest.read(p)
            self.inputs.append({"stage": m.stage, "fingerprint": m.fingerprint, "path": str(m.path)})
        self.sources = [str(s) for s in sources]
        self.declared = DeclaredInputs.declare(files, env)
        upstream = [i["fingerprint"] for i in self.inputs] + [source_fingerprint(s) for s in self.sources]
        self.fingerprint = fingerprint(name, self.version, self.config, upstream, self.declared.fingerprint_part())
        self.path = self.root / name / self.fingerprint
        self.manifest_path = self.path / MANIFEST_NAME
        self.lock_wait_s = lock_wait_s
        if isinstance(self.path, RemotePath):
            # An object store cannot create the root's key atomically: make it here, where the flow
            # plans the stage, before workers race to write the first markers.
            stagekey.root_key(self.path, create=True)

    @classmethod
    def at(
        cls, path: str | os.PathLike, *, name: str, fingerprint: str, version: str = "", config: Mapping | None = None
    ) -> Stage:
        """A stage in an explicit directory whose identity the caller decides (hand-made token
        shards, tests): ``path`` plays ``<root>/<stage>/<fingerprint>``."""
        stage = cls.__new__(cls)
        stage.path = as_path(path)
        stage.root = stage.path.parent.parent
        stage.name, stage.version, stage.fingerprint = validate_name(name), str(version), fingerprint
        stage.config = json.loads(canonical_json(dict(config or {})))
        stage.inputs, stage.sources, stage.declared = [], [], DeclaredInputs()
        stage.manifest_path = stage.path / MANIFEST_NAME
        stage.lock_wait_s = 0.0
        return stage

    # -- state
    def is_complete(self) -> bool:
        """True when the manifest is intact, signed with the root's key, and every file it lists
        matches its size and sha256. Anything else makes the stage incomplete, so a rerun
        recomputes it (only the damaged shards, whose markers no longer verify); problems are logged."""
        if not self.manifest_path.exists():
            return False
        problems = self.verify()
        if problems:
            _log.warning(
                "stage %s at %s is damaged and will be recomputed: %s", self.name, self.path, "; ".join(problems)
            )
            return False
        return True

    def verify(self) -> list[str]:
        """What is wrong with the finished stage (empty when nothing): manifest checksum and
        signature, and size + sha256 of every shard, reject and listed file (``files_sha256``)."""
        try:
            m = Manifest.read(self.manifest_path)
            files = [
                (m.shard_path(i, kind), e.num_bytes, e.sha256)
                for kind in ("shards", "rejects")
                for i, e in enumerate(m.entries(kind))
            ]
            files += [(m.file_path(n), None, h) for n, h in (m.extra.get("files_sha256") or {}).items()]
        except (ShardCorruptError, FileNotFoundError) as e:
            return [str(e)]
        return [p for path, size, digest in files if (p := check_file(path, size, digest))]

    def ensure_dir(self) -> Path | RemotePath:
        """Create the stage directory; refuse one that resolves outside the root (a symlink
        planted in the stage tree would otherwise redirect our writes elsewhere)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not isinstance(self.path, Path):  # an object-store root has no symlinks
            return self.path
        root, here = self.root.resolve(), self.path.resolve()
        if not here.is_relative_to(root):
            raise ValueError(
                f"stage directory {self.path} resolves to {here}, outside the artifact root {root} (a symlink?); "
                "refusing to write there: remove the link or choose another root"
            )
        return self.path

    def marker_path(self, index: int) -> Path | RemotePath:
        return self.path / f"part-{index:05d}.done.json"

    def shard_done(self, index: int) -> bool:
        """True if shard ``index`` finished: marker intact and signed, its files plain names in
        the stage directory with the size and sha256 it records (anything else is redone)."""
        marker = self.marker_path(index)
        if not marker.exists():
            return False
        try:
            m = read_marker(marker, index)
            for role, entry in marker_files(m, f"shard marker {marker}"):
                if role == "rejects" and not entry["rows"]:
                    continue  # nothing rejected: no rejects file
                if check_file(
                    stage_file(self.path, entry["name"], f"shard marker {marker}"), entry["bytes"], entry.get("sha256")
                ):
                    return False
        except (ShardCorruptError, KeyError, TypeError) as e:
            _log.warning("shard %d of stage %s will be recomputed: %s", index, self.name, e)
            return False
        return True

    # -- writing
    def lock(self, part: str = "stage", wait_s: float | None = None):
        """Hold this stage's lock for ``part`` ("stage": the whole stage, for stages written as
        one unit; shards and commits take their own). StageBusyError names another run holding it."""
        what = f"stage {self.name} at {self.path}" + ("" if part == "stage" else f" ({part})")
        return locks.held(locks.lock_path(self.path, part), what, self.lock_wait_s if wait_s is None else wait_s)

    @contextlib.contextmanager
    def open_shard(
        self, index: int, schema: pa.Schema | None = None, source: str | None = None, layout: Layout | None = None
    ) -> Iterator[ShardWriter]:
        """Write shard ``index`` (``layout``: the sinks, Parquet rows by default); it becomes
        visible (with its marker) only if the block succeeds."""
        self.ensure_dir()
        stagekey.root_key(self.path, create=True)  # before any data: a disk too full for the key fails here
        with self.lock(f"shard-{index:05d}"):
            # A run killed mid-shard leaves hidden temporaries (its files and marker; local files or
            # remote keys). We hold the shard's lock: they are nobody's now.
            for stale in self.path.glob(f".*-{index:05d}.*.tmp"):
                stale.unlink(missing_ok=True)
            w = ShardWriter(self, index, (layout or parquet_layout(schema))(self.path, index), source)
            try:
                yield w
            except BaseException:
                w._abort()
                raise
            faults.shard_pause(index)
            try:
                w._finish()
            except BaseException:
                # e.g. the disk filled while closing: no marker was written, so the shard is not
                # done; leave no temporary (or final file of this attempt) behind.
                w._abort()
                if not self.marker_path(index).exists():
                    for sink in w.sinks.values():
                        with contextlib.suppress(FileNotFoundError):
                            sink.final.unlink()
                raise

    def _markers(self, num_shards: int | None) -> list[dict]:
        if num_shards is None:
            found = {}
            for p in self.path.glob("part-*.done.json"):
                m = read_marker(p)
                if p.name != self.marker_path(m.get("index", -1)).name:
                    raise ShardCorruptError(
                        f"shard marker {p} names shard {m.get('index')!r}; delete it and rerun the stage"
                    )
                found[m["index"]] = m
            return [found[i] for i in sorted(found)]
        missing = [i for i in range(num_shards) if not self.marker_path(i).exists()]
        if missing:
            raise RuntimeError(
                f"stage {self.name} at {self.path}: shards {missing} not finished; rerun to complete them"
            )
        return [read_marker(self.marker_path(i), i) for i in range(num_shards)]

    def commit(self, num_shards: int | None = None, extra: Mapping[str, Any] | None = None) -> Path | RemotePath:
        """Aggregate the shard markers into ``_manifest.json`` (written last). Returns its path.

        ``num_shards`` makes commit refuse when a shard is missing (and read only shards
        ``0..num_shards-1``); ``extra`` adds stage-specific fields (e.g. a summary) to the manifest.
        """
        self.ensure_dir()
        with self.lock("commit", wait_s=max(self.lock_wait_s, COMMIT_WAIT_S)):
            markers = self._markers(num_shards)
            shards, rejects, schema = [], [], None
            counts = {"in": 0, "kept": 0, "rejected": Counter(), "failed": Counter()}
            extra_counts: Counter = Counter()
            failed_ids = []
            for m in markers:
                where = f"shard marker {self.marker_path(m['index'])}"
                for role, entry in marker_files(m, where):
                    if role == "shard":
                        shards.append({**entry, "index": m["index"], "source": m["source"]})
                        if schema is None:
                            schema = {
                                f.name: str(f.type)
                                for f in read_shard_schema(stage_file(self.path, entry["name"], where))
                            }
                    elif role == "rejects" and entry["rows"]:
                        rejects.append({**entry, "index": m["index"]})
                    elif role == "outputs":
                        shards.append(entry)
                counts["in"] += m["rows_in"]
                counts["kept"] += m["kept"]
                counts["rejected"].update(m["rejected"])
                counts["failed"].update(m["failed"])
                extra_counts.update(m.get("extra", {}))
                failed_ids.extend(m.get("failed_ids", []))
            path = self._write_manifest(
                shards=shards,
                rejects=rejects,
                counts={
                    "in": counts["in"],
                    "kept": counts["kept"],
                    "rejected": dict(counts["rejected"]),
                    "failed": dict(counts["failed"]),
                    **dict(extra_counts),
                },
                schema=schema,
                failed_ids=failed_ids[:1000],
                timings={
                    "shard_seconds": {str(m["index"]): m["seconds"] for m in markers},
                    "total_shard_seconds": round(sum(m["seconds"] for m in markers), 4),
                },
                extra=extra,
            )
        locks.sweep(self.path)  # lock files of killed writers of this stage
        return path

    def write_manifest(self, **parts: Any) -> Path | RemotePath:
        """Write ``_manifest.json`` (last, atomically, checksummed and signed) from finished parts.

        ``commit`` uses it for sharded stages; stages with other outputs (a tokenizer directory,
        a checkpoint) call it with their own entries and counts. Keywords: ``shards``, ``counts``,
        ``rejects``, ``schema``, ``failed_ids``, ``timings``, ``extra``."""
        self.ensure_dir()
        with self.lock("commit", wait_s=max(self.lock_wait_s, COMMIT_WAIT_S)):
            return self._write_manifest(**parts)

    def _write_manifest(
        self,
        *,
        shards: list[dict],
        counts: Mapping[str, Any],
        rejects: list[dict] | None = None,
        schema: Mapping[str, str] | None = None,
        failed_ids: list | None = None,
        timings: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path | RemotePath:
        for stale in self.path.glob(f".{MANIFEST_NAME}.*.tmp"):  # left by a commit that was killed
            stale.unlink(missing_ok=True)
        counts = dict(counts)
        for key in ("rejected", "failed"):
            counts[key] = dict(sorted(dict(counts.get(key, {})).items()))
        manifest = {
            "stage": self.name,
            "fingerprint": self.fingerprint,
            "version": self.version,
            "config": self.config,
            "inputs": self.inputs,
            "sources": self.sources,
            **({"declared": declared} if (declared := self.declared.to_json()) else {}),
            "schema": dict(schema) if schema else None,
            "shards": shards,
            "rejects": rejects or [],
            "counts": {k: counts[k] for k in ("in", "kept", "rejected", "failed")}
            | {k: v for k, v in sorted(counts.items()) if k not in {"in", "kept", "rejected", "failed"}},
            "failed_ids": failed_ids or [],
            "timings": {**(timings or {}), "committed_at": now()},
            **(dict(extra) if extra else {}),
        }
        manifest = json.loads(canonical_json(manifest))  # as it will read back (tuples → lists, paths → str)
        Manifest.from_json(manifest, self.manifest_path)  # a writer may not list names outside the stage either
        write_signed_json(self.manifest_path, manifest, "manifest")
        return self.manifest_path
