"""Out-of-core building blocks of the dedup reductions: a key-range partitioned spill and a
chunked membership test against a sorted file.

A reduction over the whole corpus (line-hash counts, LSH buckets, candidate pairs) sees its
rows as fixed-width columns (a ``uint64`` key plus payload) arriving in batches.
:class:`KeySpill` keeps them in memory while they fit in its budget; past it, it appends
them to one raw file per key range and column in a local directory, and hands them back as
groups in ascending key order, each small enough to sort in memory (a range still too big is
split again). Routing a batch is one sort, never a loop over rows.

:func:`member_of_sorted_file` answers "which of these hashes are in that sorted file" by
memory-mapping the file a budget-sized window at a time.

Spill files are temporary: the directory is removed when the spill closes, also on errors;
a write that finds the disk full raises :class:`lm.data.nospace.DiskFullError` naming the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from lm.data.nospace import reraise_disk_full

MiB = 1 << 20
KEY_SPACE = 1 << 64
# A group is sorted in memory with an argsort and a gather per column: about 4x its bytes.
SORT_OVERHEAD = 4
# Rows kept in memory are also handed back a key range at a time once they pass this size, so
# sorting them needs SORT_OVERHEAD x one range's bytes, not x all of them.
SPLIT_BYTES = 4 * MiB
_log = logging.getLogger(__name__)


def group_budget(memory_mb: float) -> int:
    """Bytes one in-memory group may hold so that sorting it stays within ``memory_mb``."""
    return max(64, int(memory_mb * MiB) // SORT_OVERHEAD)


def key_ranges(num_parts: int, lo: int = 0, hi: int = KEY_SPACE) -> list[tuple[int, int]]:
    """``num_parts`` contiguous, ascending ranges ``[lo_i, hi_i)`` covering ``[lo, hi)``."""
    step = -(-(hi - lo) // num_parts)
    return [(lo + i * step, min(hi, lo + (i + 1) * step)) for i in range(num_parts) if lo + i * step < hi]


def range_mask(keys: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``lo <= keys < hi`` for uint64 keys (``hi`` may be 2**64)."""
    mask = keys >= np.uint64(lo)
    if hi < KEY_SPACE:
        mask &= keys < np.uint64(hi)
    return mask


class KeySpill:
    """Rows (``key`` uint64 + payload columns) partitioned by key range, spilled past a budget.

    ``columns`` maps column name to dtype and must include ``key``. ``add`` takes equal-length
    arrays; ``groups()`` yields dicts of arrays covering disjoint key ranges in ascending
    order (rows inside a group are in no particular order: sort them as the reduction needs).
    A group holds at most ``budget`` bytes unless a single key has more rows than that.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        columns: Mapping[str, np.dtype | str],
        budget: int,
        lo: int = 0,
        hi: int = KEY_SPACE,
        fanout: int = 16,
    ):
        if "key" not in columns:
            raise ValueError(f"KeySpill columns {list(columns)} must include 'key'")
        self.dir = Path(directory)
        self.columns = {k: np.dtype(v) for k, v in columns.items()}
        self.row_bytes = sum(d.itemsize for d in self.columns.values())
        self.budget = max(budget, self.row_bytes)
        self.lo, self.hi = lo, hi
        self.ranges = key_ranges(max(2, fanout), lo, hi)
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._spilled = False
        self.spilled_bytes = 0

    def __enter__(self) -> KeySpill:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._buffer, self._buffered = [], 0
        if self._spilled:
            shutil.rmtree(self.dir, ignore_errors=True)

    def add(self, **arrays: np.ndarray) -> None:
        if set(arrays) != set(self.columns):
            raise ValueError(f"KeySpill.add got columns {sorted(arrays)}, expected {sorted(self.columns)}")
        keys = np.asarray(arrays["key"], dtype=np.uint64)
        n = len(keys)
        if n == 0:
            return
        if int(keys.min()) < self.lo or int(keys.max()) >= self.hi:
            raise ValueError(f"KeySpill keys must lie in [{self.lo}, {self.hi}); got [{keys.min()}, {keys.max()}]")
        self._buffer.append({k: np.asarray(arrays[k], dtype=d) for k, d in self.columns.items()})
        self._buffered += n * self.row_bytes
        if self._buffered > self.budget:
            self._flush()

    def _part_file(self, part: int, column: str) -> Path:
        return self.dir / f"part-{part:03d}.{column}"

    def _flush(self) -> None:
        if not self._buffer:
            return
        batch = {k: np.concatenate([b[k] for b in self._buffer]) for k in self.columns}
        self._buffer, self._buffered = [], 0
        step = np.uint64(self.ranges[0][1] - self.ranges[0][0])
        part = ((batch["key"] - np.uint64(self.lo)) // step).astype(np.int64)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(len(self.ranges) + 1))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._spilled = True
        for k, values in batch.items():
            values = values[order]
            for p in range(len(self.ranges)):
                chunk = values[bounds[p] : bounds[p + 1]]
                if len(chunk):
                    path = self._part_file(p, k)
                    with reraise_disk_full(path), open(path, "ab") as f:
                        f.write(np.ascontiguousarray(chunk).data)
                    self.spilled_bytes += chunk.nbytes

    def groups(self) -> Iterator[dict[str, np.ndarray]]:
        if not self._spilled:
            buffer, buffered = self._buffer, self._buffered
            self._buffer, self._buffered = [], 0
            yield from self._in_memory_groups(buffer, buffered)
            return
        self._flush()
        _log.info("spilled %d MB to %s", self.spilled_bytes // MiB, self.dir)
        for p in range(len(self.ranges)):
            rows = self._rows_in(p)
            if rows == 0:
                continue
            kmin, kmax = self._key_bounds(p, rows)
            if rows * self.row_bytes <= self.budget or kmin == kmax:
                if kmin == kmax and rows * self.row_bytes > self.budget:
                    _log.warning(
                        "one key has %d rows (%d MB): its group exceeds the memory budget",
                        rows,
                        rows * self.row_bytes // MiB,
                    )
                group = {k: np.fromfile(self._part_file(p, k), dtype=d) for k, d in self.columns.items()}
                self._remove(p)
                yield group
                continue
            # Still too big: split the part's actual key range again, streaming it in budget-sized reads.
            with KeySpill(self.dir / f"sub-{p:03d}", self.columns, self.budget, kmin, kmax + 1) as sub:
                for chunk in self._read(p, rows):
                    sub.add(**chunk)
                self._remove(p)
                yield from sub.groups()

    def _in_memory_groups(self, buffer: list[dict[str, np.ndarray]], nbytes: int) -> Iterator[dict[str, np.ndarray]]:
        """The rows that never spilled (``nbytes`` of them): one group, or one per key range past SPLIT_BYTES."""
        if nbytes <= SPLIT_BYTES:
            if buffer:
                yield {k: np.concatenate([b[k] for b in buffer]) for k in self.columns}
            return
        for lo, hi in self.ranges:
            masks = [range_mask(b["key"], lo, hi) for b in buffer]
            group = {k: np.concatenate([b[k][m] for b, m in zip(buffer, masks)]) for k in self.columns}
            del masks
            if len(group["key"]):
                yield group

    def _read(self, part: int, rows: int) -> Iterator[dict[str, np.ndarray]]:
        step = max(1, self.budget // self.row_bytes)
        for start in range(0, rows, step):
            yield {
                k: np.fromfile(self._part_file(part, k), dtype=d, count=step, offset=start * d.itemsize)
                for k, d in self.columns.items()
            }

    def _key_bounds(self, part: int, rows: int) -> tuple[int, int]:
        lo, hi = None, None
        step = max(1, self.budget // 8)
        for start in range(0, rows, step):
            keys = np.fromfile(self._part_file(part, "key"), dtype=np.uint64, count=step, offset=start * 8)
            kmin, kmax = int(keys.min()), int(keys.max())
            lo = kmin if lo is None else min(lo, kmin)
            hi = kmax if hi is None else max(hi, kmax)
        return lo, hi

    def _rows_in(self, part: int) -> int:
        path = self._part_file(part, "key")
        return path.stat().st_size // 8 if path.exists() else 0

    def _remove(self, part: int) -> None:
        for k in self.columns:
            with contextlib.suppress(FileNotFoundError):
                self._part_file(part, k).unlink()


def member_of_sorted_file(path: str | os.PathLike, count: int, queries: np.ndarray, budget: int) -> np.ndarray:
    """Which ``queries`` (uint64, any order) occur in ``path``: ``count`` ascending uint64 values.

    The file is memory-mapped one window of at most ``budget`` bytes at a time and windows
    holding no query are skipped, so memory stays within the budget whatever the file's size.
    """
    queries = np.asarray(queries, dtype=np.uint64)
    uq, inverse = np.unique(queries, return_inverse=True)
    found_unique = np.zeros(len(uq), dtype=bool)
    window = max(1, budget // 8)
    for start in range(0, count, window):
        if not len(uq):
            break
        n = min(window, count - start)
        mm = np.memmap(path, dtype="<u8", mode="r", offset=start * 8, shape=(n,))
        try:
            i0, i1 = np.searchsorted(uq, mm[0], side="left"), np.searchsorted(uq, mm[n - 1], side="right")
            if i1 > i0:
                sub = uq[i0:i1]
                pos = np.minimum(np.searchsorted(mm, sub), n - 1)
                found_unique[i0:i1] |= np.asarray(mm[pos]) == sub
        finally:
            del mm
    return found_unique[inverse.reshape(-1)] if len(queries) else np.zeros(0, dtype=bool)


def spill_dir_for(base: str | os.PathLike | None, fallback: Path, label: str) -> Path:
    """A fresh spill directory for one task: under ``base`` when given, else under ``fallback``
    (the stage directory of a local root); stale ones of the same ``label`` (a killed run) go."""
    parent = Path(base) if base else fallback
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".spill-{label}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return parent / f".spill-{label}-{os.getpid()}"
