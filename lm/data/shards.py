"""The stage contract: Parquet shards, per-shard completion, and the stage manifest.

Every stage writes one directory::

    <root>/<stage>/<fingerprint>/part-00000.parquet … part-NNNNN.parquet
                                /rejects-00000.parquet …   (rows dropped, with a reason)
                                /part-00000.done.json …    (per-shard stats: the completion marker)
                                /_manifest.json            (written last, atomically)

A shard is written to a hidden temporary file and renamed into place only when finished,
then its ``.done.json`` marker is renamed into place; so a killed run never leaves a half
shard and a retry redoes only the shards without a marker. ``commit()`` aggregates the
markers into ``_manifest.json``; a stage with a manifest is complete and is skipped.

``root`` may be a local path or an fsspec URL (``s3://bucket/prefix``, ``memory://…``; see
``lm.data.storage``). Object stores have no atomic rename: a file is uploaded under a
temporary key and copied to its final key, the done marker (written last) is the shard's
commit point and the manifest the stage's; readers check the sha256 (docs/storage.md).

Reading finished stages back (manifests, markers, shards, all checksum-verified) and the
file-level writes live in ``lm.data.stage_io``; everything is importable from here.

The fingerprint is a hash of (stage name, stage code version, config, input fingerprints):
same inputs + same config + same code → same directory → nothing to do on rerun.

Usage (what a task does, one shard at a time)::

    stage = Stage(root, "extract", version="1", config=cfg.model_dump(), inputs=[upstream])
    if not stage.is_complete():
        for i, shard in enumerate(upstream_shards):
            if stage.shard_done(i):
                continue
            with stage.open_shard(i, schema=SCHEMA) as w:
                for row in rows:
                    w.count_in()
                    w.write(row)          # or w.reject(row, "too_short") / w.fail("decode", row_id)
        manifest_path = stage.commit()
"""

from __future__ import annotations

import contextlib
import hashlib
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
import pyarrow.parquet as pq

from lm.data.storage import RemotePath, as_path, commit_file, local_scratch
from lm.data.nospace import DiskFullError, no_room_errno, disk_full_error, reraise_disk_full  # noqa: F401 (re-exported)
from lm.data.stage_io import (  # noqa: F401 (re-exported: the whole contract is importable from here)
    MANIFEST_NAME, ShardCorruptError, _canonical_json, _check_file, _now, accounted, atomic_write_bytes, atomic_write_json,
    describe, fault_pause, file_sha256, iter_rows, iter_stage_tables, manifest_dir, read_manifest, read_marker, read_shard,
    read_shard_schema, read_stage_table, shard_paths, table_from_rows, write_marker,
)

COMPRESSION = "zstd"
# Rows buffered before a Parquet row group is flushed: bounds memory per open shard.
ROW_GROUP_ROWS = 2048
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_log = logging.getLogger(__name__)
_FAILED_IDS_KEPT = 100  # per shard, in the marker: enough to find the records, bounded


def validate_name(name: str, what: str = "stage name") -> str:
    """Stage names become path components: refuse anything that could leave the root."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"invalid {what} {name!r}: use 1-64 lowercase letters, digits, '_', '-', '.', "
            "starting with a letter or digit (it becomes a directory name under the root)"
        )
    return name


def fingerprint(stage: str, version: str, config: Mapping[str, Any], inputs: Sequence[str]) -> str:
    """Hash of (stage, code version, config, input fingerprints); 16 hex chars."""
    payload = _canonical_json(
        {"stage": stage, "version": str(version), "config": config, "inputs": list(inputs)}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def source_fingerprint(source: str) -> str:
    """Identity of a raw input (file or URL) for fingerprints: local files by size and mtime."""
    if "://" in str(source):
        return str(source)
    p = Path(source)
    if p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return source


# --------------------------------------------------------------------------- manifests


# --------------------------------------------------------------------------- writing


@dataclass
class ShardStats:
    index: int
    rows_in: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    failed_ids: list = field(default_factory=list)
    extra: Counter = field(default_factory=Counter)  # stage-specific counters (e.g. emails masked)


class _ParquetSink:
    """Buffers rows and writes them to a temporary Parquet file; ``finish`` renames it into place
    (remote stage: the file is built in a local scratch directory, then committed by copy)."""

    def __init__(self, final: Path | RemotePath, schema: pa.Schema | None):
        self.final = final
        scratch = final.parent if isinstance(final, Path) else local_scratch("lmpipe-shard-")
        self.tmp = scratch / f".{final.name}.{os.getpid()}.tmp"
        self.schema = schema
        self.rows: list[dict] = []
        self.tables: list[pa.Table] = []  # rows added as tables, not yet written
        self.writer: pq.ParquetWriter | None = None
        self.count = 0

    def add(self, row: dict) -> None:
        if self.tables:  # rows after tables: keep their order and the row-group boundaries
            self.add_table(pa.Table.from_pylist([row], schema=self.tables[0].schema))
            return
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= ROW_GROUP_ROWS:
            self._flush()

    def add_table(self, table: pa.Table) -> None:
        """Many rows at once; row groups fall where they would had the rows come one by one."""
        if self.rows:
            self.tables.append(pa.Table.from_pylist(self.rows, schema=self.schema or table.schema))
            self.rows = []
        self.tables.append(table)
        self.count += table.num_rows
        buffered = sum(t.num_rows for t in self.tables)
        if buffered >= ROW_GROUP_ROWS:
            whole = pa.concat_tables(self.tables)
            cut = buffered - buffered % ROW_GROUP_ROWS
            for start in range(0, cut, ROW_GROUP_ROWS):
                self._write(whole.slice(start, ROW_GROUP_ROWS).combine_chunks())
            self.tables = [whole.slice(cut)] if cut < buffered else []

    def _flush(self) -> None:
        if self.tables:
            tables, self.tables = self.tables, []
            self._write(pa.concat_tables(tables).combine_chunks())
            return
        if not self.rows and self.writer is not None:
            return
        self._write(pa.Table.from_pylist(self.rows, schema=self.schema))
        self.rows = []

    def _write(self, table: pa.Table) -> None:
        with reraise_disk_full(self.final):
            if self.writer is None:
                self.schema = table.schema
                self.writer = pq.ParquetWriter(self.tmp, table.schema, compression=COMPRESSION)
            self.writer.write_table(table)

    def finish(self) -> dict:
        self._flush()  # also creates an empty shard when nothing was written
        self.writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest = file_sha256(self.tmp)
        size = self.tmp.stat().st_size
        commit_file(self.tmp, self.final)
        self._clean_scratch()
        return {"name": self.final.name, "rows": self.count, "bytes": size, "sha256": digest}

    def abort(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        self._clean_scratch()

    def _clean_scratch(self) -> None:
        if isinstance(self.final, RemotePath):
            with contextlib.suppress(OSError):
                self.tmp.parent.rmdir()


class ShardWriter:
    """Writes one output shard (and its rejects) of a stage. Use through ``Stage.open_shard``."""

    def __init__(self, stage: "Stage", index: int, schema: pa.Schema | None, source: str | None):
        self.stage = stage
        self.index = index
        self.source = source
        self.stats = ShardStats(index)
        self._out = _ParquetSink(stage.path / f"part-{index:05d}.parquet", schema)
        reject_schema = schema.append(pa.field("reason", pa.string())) if schema is not None else None
        self._rejects = _ParquetSink(stage.path / f"rejects-{index:05d}.parquet", reject_schema)
        self._started = time.time()

    def count_in(self, n: int = 1) -> None:
        """Count ``n`` input records read (every one must end kept, rejected or failed)."""
        self.stats.rows_in += n

    def write(self, row: dict) -> None:
        self.stats.kept += 1
        self._out.add(row)

    def reject(self, row: dict, reason: str) -> None:
        self.stats.rejected[reason] += 1
        self._rejects.add({**row, "reason": reason})

    def write_table(self, table: pa.Table) -> None:
        """Keep every row of ``table`` (as ``write`` per row, without a Python loop)."""
        self.stats.kept += table.num_rows
        self._out.add_table(table)

    def reject_table(self, table: pa.Table, reasons: str | pa.Array) -> None:
        """Reject every row of ``table`` with its reason (one string for all, or one per row)."""
        if isinstance(reasons, str):
            reasons = pa.array([reasons] * table.num_rows, pa.string())
        for reason, n in zip(*pc.value_counts(reasons).flatten()):
            self.stats.rejected[reason.as_py()] += n.as_py()
        self._rejects.add_table(table.append_column("reason", reasons))

    def fail(self, kind: str, record_id: str | None = None) -> None:
        """Count a record that could not be processed (e.g. undecodable), with its id for the log."""
        self.stats.failed[kind] += 1
        if record_id is not None and len(self.stats.failed_ids) < _FAILED_IDS_KEPT:
            self.stats.failed_ids.append({"id": record_id, "kind": kind})

    def add_count(self, key: str, n: int = 1) -> None:
        self.stats.extra[key] += n

    def _finish(self) -> dict:
        with reraise_disk_full(self._out.final):
            out = self._out.finish()
        with reraise_disk_full(self._rejects.final):
            rej = self._rejects.finish()
        s = self.stats
        marker = {
            "index": self.index,
            "source": self.source,
            "shard": out,
            "rejects": rej,
            "rows_in": s.rows_in,
            "kept": s.kept,
            "rejected": dict(s.rejected),
            "failed": dict(s.failed),
            "failed_ids": s.failed_ids,
            "extra": dict(s.extra),
            "seconds": round(time.time() - self._started, 4),
            "finished_at": _now(),
        }
        write_marker(self.stage.marker_path(self.index), marker)
        return marker

    def _abort(self) -> None:
        self._out.abort()
        self._rejects.abort()


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
    ):
        """``inputs``: upstream manifest paths (lineage); ``sources``: raw inputs (files, URLs)."""
        self.root = as_path(root)
        self.name = validate_name(name)
        self.version = str(version)
        self.config = json.loads(_canonical_json(dict(config)))
        self.inputs = []
        for p in inputs:
            m = read_manifest(p)
            self.inputs.append({"stage": m["stage"], "fingerprint": m["fingerprint"], "path": m["_path"]})
        self.sources = [str(s) for s in sources]
        upstream = [i["fingerprint"] for i in self.inputs] + [source_fingerprint(s) for s in self.sources]
        self.fingerprint = fingerprint(name, self.version, self.config, upstream)
        self.path = self.root / name / self.fingerprint
        self.manifest_path = self.path / MANIFEST_NAME

    # -- state
    def is_complete(self) -> bool:
        """True when the manifest is intact and every file it lists matches its size and sha256.

        Anything corrupt (flipped bytes, truncation, a missing file) makes the stage incomplete,
        so a rerun recomputes it (only the damaged shards, whose markers no longer verify)
        instead of trusting it; the problems are logged."""
        if not self.manifest_path.exists():
            return False
        problems = self.verify()
        if problems:
            _log.warning("stage %s at %s is damaged and will be recomputed: %s", self.name, self.path, "; ".join(problems))
            return False
        return True

    def verify(self) -> list[str]:
        """What is wrong with the finished stage (empty when nothing): manifest checksum, and
        size + sha256 of every shard, reject and listed file (``files_sha256``)."""
        try:
            m = read_manifest(self.manifest_path)
        except (ShardCorruptError, FileNotFoundError) as e:
            return [str(e)]
        entries = [s for kind in ("shards", "rejects") for s in m.get(kind, [])]
        entries += [{"name": n, "sha256": h} for n, h in (m.get("files_sha256") or {}).items()]
        return [p for e in entries if (p := _check_file(self.path / e["name"], e.get("bytes"), e.get("sha256")))]

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
        """True if shard ``index`` finished: marker intact, its files present with the size and
        sha256 it records (a corrupt shard or marker is redone, not trusted)."""
        marker = self.marker_path(index)
        if not marker.exists():
            return False
        try:
            m = read_marker(marker)
            for key in ("shard", "rejects"):
                if key == "rejects" and not m[key]["rows"] and not (self.path / m[key]["name"]).exists():
                    continue  # commit removes empty rejects files
                if _check_file(self.path / m[key]["name"], m[key]["bytes"], m[key].get("sha256")):
                    return False
        except (ShardCorruptError, KeyError, TypeError):
            return False
        return True

    # -- writing
    @contextlib.contextmanager
    def open_shard(self, index: int, schema: pa.Schema | None = None, source: str | None = None) -> Iterator[ShardWriter]:
        """Write shard ``index``; it becomes visible (with its marker) only if the block succeeds."""
        self.ensure_dir()
        # A run killed mid-shard leaves hidden temporaries (shard, rejects, marker; local files
        # or remote keys); one writer per shard, so clear them.
        for pattern in (f".*-{index:05d}.parquet.*.tmp", f".{self.marker_path(index).name}.*.tmp"):
            for stale in self.path.glob(pattern):
                stale.unlink(missing_ok=True)
        w = ShardWriter(self, index, schema, source)
        try:
            yield w
        except BaseException:
            w._abort()
            raise
        fault_pause(index)
        try:
            w._finish()
        except BaseException:
            # e.g. the disk filled while closing: no marker was written, so the shard is not
            # done; leave no temporary (or final file of this attempt) behind.
            w._abort()
            if not self.marker_path(index).exists():
                for sink in (w._out, w._rejects):
                    with contextlib.suppress(FileNotFoundError):
                        sink.final.unlink()
            raise

    def commit(self, num_shards: int | None = None, extra: Mapping[str, Any] | None = None) -> Path | RemotePath:
        """Aggregate the shard markers into ``_manifest.json`` (written last). Returns its path.

        ``num_shards`` makes commit refuse when a shard is missing; ``extra`` adds stage-specific
        fields (e.g. a summary) to the manifest.
        """
        self.ensure_dir()
        markers = []
        for p in sorted(self.path.glob("part-*.done.json")):
            markers.append(read_marker(p))
        markers.sort(key=lambda m: m["index"])
        if num_shards is not None:
            have = {m["index"] for m in markers}
            missing = sorted(set(range(num_shards)) - have)
            if missing:
                raise RuntimeError(f"stage {self.name} at {self.path}: shards {missing} not finished; rerun to complete them")
        counts = {"in": 0, "kept": 0, "rejected": Counter(), "failed": Counter()}
        extra_counts: Counter = Counter()
        failed_ids = []
        for m in markers:
            counts["in"] += m["rows_in"]
            counts["kept"] += m["kept"]
            counts["rejected"].update(m["rejected"])
            counts["failed"].update(m["failed"])
            extra_counts.update(m.get("extra", {}))
            failed_ids.extend(m.get("failed_ids", []))
        schema = None
        if markers:
            first = self.path / markers[0]["shard"]["name"]
            schema = {f.name: str(f.type) for f in read_shard_schema(first)}
        # Rejected shards' parquet files with zero rows are not listed; remove them to keep the dir tidy.
        for m in markers:
            if not m["rejects"]["rows"]:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / m["rejects"]["name"]).unlink()
        return self.write_manifest(
            shards=[{**m["shard"], "index": m["index"], "source": m["source"]} for m in markers],
            rejects=[{**m["rejects"], "index": m["index"]} for m in markers if m["rejects"]["rows"]],
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

    def write_manifest(
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
        """Write ``_manifest.json`` (last, atomically, with its own checksum) from finished parts.

        ``commit`` uses it for Parquet stages; stages with other shard formats (token ``.bin``
        files, a tokenizer directory) call it with their own shard entries and counts."""
        self.ensure_dir()
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
            "schema": dict(schema) if schema else None,
            "shards": shards,
            "rejects": rejects or [],
            "counts": {k: counts[k] for k in ("in", "kept", "rejected", "failed")}
            | {k: v for k, v in sorted(counts.items()) if k not in {"in", "kept", "rejected", "failed"}},
            "failed_ids": failed_ids or [],
            "timings": {**(timings or {}), "committed_at": _now()},
            **(dict(extra) if extra else {}),
        }
        manifest["manifest_sha256"] = hashlib.sha256(_canonical_json(manifest).encode()).hexdigest()
        atomic_write_json(self.manifest_path, manifest)
        return self.manifest_path
