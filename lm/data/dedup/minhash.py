"""MinHash + LSH near-duplicate detection (Broder 1997; Leskovec et al., ch. 3).

A document becomes a set of word n-grams of its normalized text (lowercased, NFD with
accents removed, punctuation removed, whitespace collapsed). Its MinHash signature
(``num_hashes`` values, computed with ``datasketch``) estimates Jaccard similarity; the
signature is cut into ``num_bands`` bands of ``num_hashes / num_bands`` rows, and two
documents sharing any band's hash become a candidate pair. Candidates are verified by
their *true* Jaccard similarity (≥ ``threshold``) and joined by union-find; each cluster
keeps one document (the first in input order).

The steps are separate functions so the Parquet version can run them as separate stages
across shards (signatures → buckets → clusters → filter, see ``tasks/dedup.py``);
``minhash_dedup`` runs them in memory on text files (the CS336 interface).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

_PUNCT = re.compile(r"[^\w\s]|_")


def validate_params(num_hashes: int, num_bands: int, ngrams: int, threshold: float) -> None:
    """Fail before any work on parameters that cannot work together."""
    if num_hashes < 1:
        raise ValueError(f"num_hashes={num_hashes} must be >= 1")
    if num_bands < 1 or num_hashes % num_bands:
        raise ValueError(f"num_bands={num_bands} must be >= 1 and divide num_hashes={num_hashes} (rows per band = num_hashes / num_bands)")
    if ngrams < 1:
        raise ValueError(f"ngrams={ngrams} must be >= 1")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")


def normalize(text: str) -> str:
    """Lowercase, NFD-normalize, drop accents and punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def shingles(text: str, ngrams: int) -> set[str]:
    """Word n-grams of the normalized text; a text shorter than n words is one shingle."""
    words = normalize(text).split()
    if not words:
        return set()
    if len(words) < ngrams:
        return {" ".join(words)}
    return {" ".join(words[i : i + ngrams]) for i in range(len(words) - ngrams + 1)}


@lru_cache(maxsize=8)
def _permutations(num_hashes: int, seed: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_hashes, seed=seed)
    return m.permutations, m.scheme


def signature(doc_shingles: Iterable[str], num_hashes: int, seed: int = 1) -> np.ndarray:
    """MinHash signature, uint64[num_hashes] (values fit in 32 bits)."""
    from datasketch import MinHash

    # Reuse the permutations: generating 500 of them per document would dominate the cost.
    perms, scheme = _permutations(num_hashes, seed)
    m = MinHash(num_perm=num_hashes, seed=seed, permutations=perms, scheme=scheme)
    m.update_batch([s.encode("utf-8", "surrogatepass") for s in doc_shingles])
    return m.hashvalues.astype(np.uint64)


def band_keys(sig: np.ndarray, num_bands: int) -> list[int]:
    """One 64-bit key per band: documents with an equal key in a band are candidates."""
    rows = len(sig) // num_bands
    raw = np.ascontiguousarray(sig, dtype=np.uint64).reshape(num_bands, rows)
    return [int.from_bytes(hashlib.blake2b(raw[b].tobytes(), digest_size=8).digest(), "little") for b in range(num_bands)]


def candidate_pairs(keys_by_band: Iterable[Iterable[tuple[int, object]]]) -> set[tuple]:
    """Pairs (first, other) of documents sharing a bucket, per band.

    ``keys_by_band`` yields, for each band, (key, doc) pairs. A bucket with k documents
    yields k-1 pairs (each with the bucket's first document) rather than k(k-1)/2; union-find
    joins them into the same cluster all the same.
    """
    pairs: set[tuple] = set()
    for band in keys_by_band:
        first: dict[int, object] = {}
        for key, doc in band:
            head = first.setdefault(key, doc)
            if head != doc:
                pairs.add((head, doc) if head < doc else (doc, head))
    return pairs


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class UnionFind:
    """Disjoint sets with path halving; the root of a set is its smallest member."""

    def __init__(self):
        self.parent: dict = {}

    def find(self, x):
        p = self.parent.setdefault(x, x)
        while p != x:
            self.parent[x] = self.parent.setdefault(p, p)
            x, p = p, self.parent[x]
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def duplicates_to_drop(pairs: Iterable[tuple], shingles_of, threshold: float) -> dict:
    """Verify candidate pairs by true Jaccard and cluster them: ``{dropped: (kept, jaccard)}``.

    ``shingles_of(doc)`` returns a document's shingle set. Each cluster keeps its smallest
    document (input order); every other member is dropped.
    """
    uf = UnionFind()
    best: dict = {}
    for a, b in sorted(pairs):
        j = jaccard(shingles_of(a), shingles_of(b))
        if j >= threshold:
            uf.union(a, b)
            best[a] = max(best.get(a, 0.0), j)
            best[b] = max(best.get(b, 0.0), j)
    return {doc: (uf.find(doc), round(best[doc], 4)) for doc in list(uf.parent) if uf.find(doc) != doc}


def minhash_dedup(
    input_paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    num_hashes: int,
    num_bands: int,
    ngrams: int,
    threshold: float,
    seed: int = 1,
) -> list[Path]:
    """Write to ``output_dir`` (same file names) the input files that are not near-duplicates."""
    validate_params(num_hashes, num_bands, ngrams, threshold)
    paths = [Path(p) for p in input_paths]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input file {p} does not exist")
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    sets = [shingles(t, ngrams) for t in texts]
    keys = [band_keys(signature(s, num_hashes, seed), num_bands) if s else None for s in sets]
    bands = ([(k[b], i) for i, k in enumerate(keys) if k is not None] for b in range(num_bands))
    drop = duplicates_to_drop(candidate_pairs(bands), lambda i: sets[i], threshold)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, p in enumerate(paths):
        if i in drop:
            continue
        (out / p.name).write_bytes(p.read_bytes())
        written.append(out / p.name)
    return written
