"""Where a shard's items go: the sinks of :class:`lm.data.shards.ShardWriter`.

A sink writes one output file of one shard to a hidden temporary file (a local scratch
directory on a remote root) and, in ``finish``, renames (or uploads and copies) it into place
and returns its entry for the shard's marker: name, size, sha256 and what it holds. Nothing is
visible under the final name before the writer's marker says the shard is done.

Two layouts (a layout makes the sinks of shard ``index`` in a stage directory):

- :func:`parquet_layout` — ``part-NNNNN.parquet`` (kept rows) and ``rejects-NNNNN.parquet``
  (rejected rows with a ``reason``; no file when nothing was rejected). Marker keys ``shard``
  and ``rejects``.
- :func:`token_layout` — ``train-NNNNN.bin`` / ``val-NNNNN.bin``: raw little-endian uint16
  (uint32 when the vocabulary exceeds 65,536) token ids, memory-mappable; a split with no
  tokens writes no file. Marker key ``outputs`` (a list).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lm.data.nospace import reraise_disk_full
from lm.data.storage import RemotePath, commit_file, file_sha256, local_scratch

COMPRESSION = "zstd"
# Rows buffered before a Parquet row group is flushed: bounds memory per open shard.
ROW_GROUP_ROWS = 2048


class Sink(Protocol):
    """One output file of one shard."""

    final: Path | RemotePath
    marker_key: str  # "shard" / "rejects" (one entry each) or "outputs" (a list)

    def add(self, item: Any) -> None: ...

    def finish(self) -> dict | None:
        """Publish the file; its marker entry (None: nothing to list)."""

    def abort(self) -> None:
        """Remove the temporary file (the final name was never written)."""


Layout = Callable[[Path | RemotePath, int], dict[str, Sink]]


def token_dtype(vocab_size: int) -> np.dtype:
    """Token ids are stored as little-endian uint16 when they fit, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65_536 else np.dtype("<u4")


class _TempFile:
    """The hidden temporary behind a sink (local: beside the final file; remote: in scratch)."""

    def __init__(self, final: Path | RemotePath):
        self.final = final
        scratch = final.parent if isinstance(final, Path) else local_scratch("lmpipe-shard-")
        self.tmp = scratch / f".{final.name}.{os.getpid()}.tmp"

    def publish(self) -> tuple[int, str]:
        """fsync, hash and move the temporary into place; returns (bytes, sha256)."""
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        digest, size = file_sha256(self.tmp), self.tmp.stat().st_size
        commit_file(self.tmp, self.final)
        self.clean_scratch()
        return size, digest

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        self.clean_scratch()

    def clean_scratch(self) -> None:
        if isinstance(self.final, RemotePath):
            with contextlib.suppress(OSError):
                self.tmp.parent.rmdir()


class ParquetSink:
    """Rows → a zstd Parquet file, flushed in row groups of :data:`ROW_GROUP_ROWS`."""

    def __init__(self, final: Path | RemotePath, schema: pa.Schema | None, marker_key: str, *, keep_empty: bool = True):
        self.final, self.marker_key, self.keep_empty = final, marker_key, keep_empty
        self._file = _TempFile(final)
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
                self.writer = pq.ParquetWriter(self._file.tmp, table.schema, compression=COMPRESSION)
            self.writer.write_table(table)

    def finish(self) -> dict:
        if not self.count and not self.keep_empty:
            self._file.discard()
            return {"name": self.final.name, "rows": 0, "bytes": 0, "sha256": None}
        with reraise_disk_full(self.final):
            self._flush()  # also creates an empty shard when nothing was written
            self.writer.close()
            size, digest = self._file.publish()
        return {"name": self.final.name, "rows": self.count, "bytes": size, "sha256": digest}

    def abort(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self._file.discard()


class TokenSink:
    """Token-id arrays (one per document, each ending with the end-of-text id) → one ``.bin`` file."""

    marker_key = "outputs"

    def __init__(self, final: Path | RemotePath, dtype: np.dtype, *, split: str, index: int):
        self.final, self.dtype, self.split, self.index = final, np.dtype(dtype), split, index
        self._file = _TempFile(final)
        self._f = open(self._file.tmp, "wb")
        self.tokens = self.docs = 0

    def add(self, ids) -> None:
        arr = np.ascontiguousarray(np.asarray(ids).astype(self.dtype, copy=False))
        with reraise_disk_full(self.final):
            self._f.write(arr.data)  # not tofile: its short write loses the errno (ENOSPC)
        self.tokens += len(arr)
        self.docs += 1

    def finish(self) -> dict | None:
        with reraise_disk_full(self.final):
            self._f.flush()
            self._f.close()
            if not self.tokens:  # an empty file cannot be memory-mapped: leave it out
                self._file.discard()
                return None
            size, digest = self._file.publish()
        return {
            "name": self.final.name,
            "index": self.index,
            "split": self.split,
            "tokens": self.tokens,
            "docs": self.docs,
            "bytes": size,
            "sha256": digest,
        }

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._f.close()
        self._file.discard()


def parquet_layout(schema: pa.Schema | None) -> Layout:
    """Kept rows to ``part-NNNNN.parquet``, rejected rows (+ ``reason``) to ``rejects-NNNNN.parquet``."""
    reject_schema = schema.append(pa.field("reason", pa.string())) if schema is not None else None

    def make(stage_dir: Path | RemotePath, index: int) -> dict[str, Sink]:
        return {
            "shard": ParquetSink(stage_dir / f"part-{index:05d}.parquet", schema, "shard"),
            "rejects": ParquetSink(
                stage_dir / f"rejects-{index:05d}.parquet", reject_schema, "rejects", keep_empty=False
            ),
        }

    return make


def token_layout(dtype: np.dtype, splits: tuple[str, ...] = ("train", "val")) -> Layout:
    """One ``<split>-NNNNN.bin`` per split."""

    def make(stage_dir: Path | RemotePath, index: int) -> dict[str, Sink]:
        return {s: TokenSink(stage_dir / f"{s}-{index:05d}.bin", dtype, split=s, index=index) for s in splits}

    return make
