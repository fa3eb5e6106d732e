"""Exact line deduplication: drop every line that occurs more than once in the corpus.

Two passes: (1) count a 64-bit hash of every line across all inputs, (2) rewrite each
input keeping the lines whose hash was seen once. Memory grows with the number of
*distinct* lines (8 bytes of hash + a count each), not with the corpus' bytes. As in CS336
assignment 4, *all* copies of a repeated line go (boilerplate such as menus and cookie
banners repeats; content rarely does).

The Parquet stage version (``tasks/dedup.py``) runs pass 1 per shard (``line_hash_counts``),
merges the counts (``duplicate_hashes``) and runs pass 2 per shard (``drop_lines``).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


def line_hash(line: str) -> int:
    """A stable 64-bit hash of a line without its line ending (stable across processes).

    Both passes split with ``splitlines(keepends=True)`` so they hash the same strings.
    """
    return int.from_bytes(hashlib.blake2b(line.rstrip("\r\n").encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def line_hash_counts(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct line hashes of ``texts`` and how often each occurs: (uint64[n], int64[n])."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(line_hash(line) for line in text.splitlines(keepends=True))
    hashes = np.fromiter(counts.keys(), dtype=np.uint64, count=len(counts))
    num = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    return hashes, num


def duplicate_hashes(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Merge per-shard (hashes, counts) and return the sorted hashes seen more than once.

    Shards are folded in one at a time, so memory holds the corpus' distinct hashes plus one
    shard's, however many shards there are. Counts saturate at 2: only "more than once" matters.
    """
    acc_h = np.empty(0, dtype=np.uint64)
    acc_n = np.empty(0, dtype=np.int64)
    for h, n in parts:
        uniq, inverse = np.unique(np.concatenate([acc_h, h]), return_inverse=True)
        total = np.bincount(inverse, weights=np.concatenate([acc_n, n]), minlength=len(uniq))
        acc_h, acc_n = uniq, np.minimum(total, 2).astype(np.int64)
    return acc_h[acc_n > 1]


def drop_lines(text: str, duplicates: np.ndarray) -> tuple[str, int]:
    """``text`` without the lines whose hash is in the sorted array ``duplicates``; lines dropped."""
    lines = text.splitlines(keepends=True)
    if not lines or len(duplicates) == 0:
        return text, 0
    hashes = np.fromiter((line_hash(ln) for ln in lines), dtype=np.uint64, count=len(lines))
    pos = np.searchsorted(duplicates, hashes)
    pos[pos == len(duplicates)] = 0
    dup = duplicates[pos] == hashes
    kept = [ln for ln, d in zip(lines, dup) if not d]
    return "".join(kept), int(dup.sum())


def exact_line_dedup(input_paths: Sequence[str | os.PathLike], output_dir: str | os.PathLike) -> list[Path]:
    """Rewrite each text file into ``output_dir`` (same file name) without corpus-duplicate lines."""
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

    # Pass 1 streams file by file: only the hash counts stay in memory.
    dups = duplicate_hashes(line_hash_counts([read(p)]) for p in paths)
    written = []
    for p in paths:
        text, _ = drop_lines(read(p), dups)
        target = out / p.name
        with open(target, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)
        written.append(target)
    return written
