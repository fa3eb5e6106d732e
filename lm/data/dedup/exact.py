"""Exact line deduplication: drop every line that occurs more than once in the corpus.

As in CS336 assignment 4, *all* copies of a repeated line go (boilerplate such as menus and
cookie banners repeats; content rarely does). Lines are compared by a 64-bit hash (blake2b)
of the line without its line ending. Two passes:

1. count: each shard's distinct line hashes with their counts (``line_hash_counts``); the
   counts of all shards are summed per hash out of core (:class:`~lm.data.dedup.spill.KeySpill`:
   in memory up to a budget, else spilled by hash range), giving the sorted hashes seen more
   than once (``iter_duplicate_hashes``), written to one sorted file of uint64.
2. rewrite: each shard's line hashes are looked up in that file through budget-sized memory
   maps (``member_of_sorted_file``) and the lines found there are dropped (``drop_duplicate_lines``).

Memory is the budget plus one shard (one file for ``exact_line_dedup``), whatever the corpus'
size. The Parquet stages (``lm.data.dedup.stages``: ``line_counts`` → ``line_duplicates`` →
``exact_dedup``) run pass 1 per shard, the sum per hash range in parallel tasks, pass 2 per shard.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress
from pathlib import Path

import numpy as np

from lm.data.dedup.spill import KEY_SPACE, KeySpill, group_budget, member_of_sorted_file
from lm.data.nospace import reraise_disk_full

DEFAULT_MEMORY_MB = 512
TEXT_BATCH = 1024  # documents whose lines are split and hashed together


def line_hash(line: str) -> int:
    """A stable 64-bit hash of a line without its line ending (stable across processes)."""
    return int(hash_lines([line])[0])


def hash_lines(lines: Sequence[str]) -> np.ndarray:
    """uint64 hashes of ``lines`` (line endings ignored): blake2b, 8 bytes, little-endian."""
    digests = b"".join(
        [hashlib.blake2b(ln.rstrip("\r\n").encode("utf-8", "surrogatepass"), digest_size=8).digest() for ln in lines]
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def split_lines(texts: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
    """Every line of ``texts`` (``splitlines(keepends=True)``; None has none) and the offsets
    ``[start_0, start_1, …, total]`` of each text's lines in that flat list."""
    per_text = [t.splitlines(keepends=True) if isinstance(t, str) else [] for t in texts]
    offsets = np.zeros(len(per_text) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in per_text], out=offsets[1:])
    return [ln for x in per_text for ln in x], offsets


def line_hash_counts(texts: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct line hashes of ``texts`` (sorted) and how often each occurs: (uint64[n], int64[n])."""
    texts, parts = list(texts), []
    for lo in range(0, len(texts), TEXT_BATCH):  # the Python lines of one batch at a time
        lines, _ = split_lines(texts[lo : lo + TEXT_BATCH])
        parts.append(hash_lines(lines))
    hashes, counts = np.unique(np.concatenate(parts) if parts else np.empty(0, np.uint64), return_counts=True)
    return hashes, counts.astype(np.int64)


def iter_duplicate_hashes(
    parts: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    memory_mb: float = DEFAULT_MEMORY_MB,
    spill_dir: str | os.PathLike | None = None,
    lo: int = 0,
    hi: int = KEY_SPACE,
) -> Iterator[np.ndarray]:
    """Sum (hash, count) parts per hash and yield the hashes counted more than once, sorted,
    in ascending chunks. Only hashes in ``[lo, hi)`` are considered (a partition of the work).

    Memory stays within ``memory_mb``: past it the parts spill to ``spill_dir`` (a temporary
    directory when None) by hash range and are summed one range at a time.
    """
    with (
        tempfile.TemporaryDirectory(prefix="lmpipe-spill-", dir=spill_dir) as tmp,
        KeySpill(Path(tmp) / "counts", {"key": np.uint64, "count": np.int64}, group_budget(memory_mb), lo, hi) as spill,
    ):
        for hashes, counts in parts:
            spill.add(key=hashes, count=counts)
        for group in spill.groups():
            order = np.argsort(group["key"], kind="stable")
            keys, counts = group["key"][order], group["count"][order]
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            total = np.add.reduceat(counts, starts)
            dups = keys[starts][total > 1]
            if len(dups):
                yield dups


def duplicate_hashes(parts: Iterable[tuple[np.ndarray, np.ndarray]], **kw) -> np.ndarray:
    """The sorted hashes that per-shard (hashes, counts) parts count more than once in total."""
    chunks = list(iter_duplicate_hashes(parts, **kw))
    return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.uint64)


def drop_duplicate_lines(texts: Sequence[str | None], is_duplicate) -> tuple[list[str | None], np.ndarray]:
    """``texts`` without their duplicate lines, and how many lines each lost.

    ``is_duplicate(hashes) -> bool array`` answers for a batch of line hashes (e.g. through
    ``member_of_sorted_file``). None stays None.
    """
    out, dropped = [], []
    for lo in range(0, len(texts), TEXT_BATCH):
        o, d = _drop_batch(texts[lo : lo + TEXT_BATCH], is_duplicate)
        out += o
        dropped.append(d)
    return out, np.concatenate(dropped) if dropped else np.zeros(0, np.int64)


def _drop_batch(texts: Sequence[str | None], is_duplicate) -> tuple[list[str | None], np.ndarray]:
    lines, offsets = split_lines(texts)
    dup = is_duplicate(hash_lines(lines)) if lines else np.zeros(0, dtype=bool)
    kept_lines = list(compress(lines, (~dup).tolist()))
    line_text = np.repeat(np.arange(len(texts)), np.diff(offsets))
    kept = np.bincount(line_text, weights=~dup, minlength=len(texts)).astype(np.int64)
    kept_offsets = np.concatenate([[0], np.cumsum(kept)])
    out = [
        t if not isinstance(t, str) else "".join(kept_lines[kept_offsets[i] : kept_offsets[i + 1]])
        for i, t in enumerate(texts)
    ]
    return out, np.diff(offsets) - kept


def drop_lines(text: str, duplicates: np.ndarray) -> tuple[str, int]:
    """``text`` without the lines whose hash is in the sorted array ``duplicates``; lines dropped."""
    (out,), (dropped,) = drop_duplicate_lines([text], lambda h: _in_sorted(duplicates, h))
    return out, int(dropped)


def _in_sorted(sorted_values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    if not len(sorted_values):
        return np.zeros(len(queries), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, queries), len(sorted_values) - 1)
    return sorted_values[pos] == queries


def write_sorted_hashes(chunks: Iterable[np.ndarray], path: str | os.PathLike) -> int:
    """Write ascending uint64 ``chunks`` to ``path`` (raw little-endian); returns the count."""
    n = 0
    with reraise_disk_full(path), open(path, "wb") as f:
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype="<u8").data)
            n += len(chunk)
    return n


def exact_line_dedup(
    input_paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    memory_mb: float = DEFAULT_MEMORY_MB,
    spill_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Rewrite each text file into ``output_dir`` (same file name) without corpus-duplicate lines.

    Holds one file and at most ``memory_mb`` of hashes in memory; the rest spills to
    ``spill_dir`` (a temporary directory when None).
    """
    paths = [Path(p) for p in input_paths]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input file {p} does not exist")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError("input files must have distinct names: each is written to output_dir under its own name")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def read(p: Path) -> str:
        # newline="" keeps '\r\n' as it was, so kept lines are written back byte for byte.
        with open(p, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return f.read()

    work = Path(tempfile.mkdtemp(prefix="lmpipe-exact-", dir=spill_dir))
    try:
        dups_file = work / "duplicates.u64"
        chunks = iter_duplicate_hashes(
            (line_hash_counts([read(p)]) for p in paths), memory_mb=memory_mb, spill_dir=work
        )
        count = write_sorted_hashes(chunks, dups_file)
        budget = group_budget(memory_mb)
        written = []
        for p in paths:
            (text,), _ = drop_duplicate_lines([read(p)], lambda h: member_of_sorted_file(dups_file, count, h, budget))
            target = out / p.name
            with (
                reraise_disk_full(target),
                open(target, "w", encoding="utf-8", errors="surrogateescape", newline="") as f,
            ):
                f.write(text)
            written.append(target)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)
