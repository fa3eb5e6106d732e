"""MinHash + LSH near-duplicate detection (Broder 1997; Leskovec et al., ch. 3), vectorized.

A document becomes a set of word n-grams of its normalized text (lowercased, NFD with
accents removed, punctuation removed, whitespace collapsed). Each shingle is hashed to 64
bits with numpy over a whole batch of documents (a polynomial hash per word, the words of a
window combined, a murmur3 finalizer: no Python per shingle). The MinHash signature is
``num_hashes`` values ``min over shingles of (a_i * h + b_i mod 2**64) >> 32`` (multiply-shift
hashing; ``a_i, b_i`` from PCG64(seed)), a uint32 row per document. The signature is cut into
``num_bands`` bands of ``num_hashes / num_bands`` rows, each band hashed to a 64-bit key; two
documents sharing a band key become a candidate pair (a bucket of k documents gives k-1
pairs, each with the bucket's first document). Candidates are verified by their Jaccard
similarity (≥ ``threshold``): exactly, on the two documents' shingle-hash sets (``verify=
"shingles"``), or estimated as the fraction of equal signature values (``"signature"``:
cheaper, measured in ``bench/dedup_quality.py``). Verified pairs are joined into connected
components (scipy); each component keeps its first document (input order) and drops the rest.

The steps are functions over arrays so the Parquet stages (``lm.data.dedup.stages``) run them
across shards in parallel tasks; ``minhash_dedup`` runs them on text files (the CS336
interface) through the same bounded-memory path.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from lm.data.dedup.spill import KeySpill, group_budget
from lm.data.nospace import reraise_disk_full

_SEPARATORS = re.compile(r"[\W_]+")
VERIFY_MODES = ("shingles", "signature")
DEFAULT_MEMORY_MB = 512
BATCH_BYTES = 1 << 18  # normalized text hashed per numpy batch: bounds the temporaries (~40 bytes/byte)
_U = np.uint64


def validate_params(num_hashes: int, num_bands: int, ngrams: int, threshold: float, verify: str = "shingles") -> None:
    """Fail before any work on parameters that cannot work together."""
    if num_hashes < 1:
        raise ValueError(f"num_hashes={num_hashes} must be >= 1")
    if num_bands < 1 or num_hashes % num_bands:
        raise ValueError(
            f"num_bands={num_bands} must be >= 1 and divide "
            f"num_hashes={num_hashes} (rows per band = num_hashes / num_bands)"
        )
    if ngrams < 1:
        raise ValueError(f"ngrams={ngrams} must be >= 1")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold={threshold} must be in (0, 1]")
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r} must be one of {VERIFY_MODES}")


# --------------------------------------------------------------------------- text → shingles


class _StripCombining(dict):
    """``str.translate`` table deleting combining characters, filled in as characters are met."""

    def __missing__(self, cp: int):
        self[cp] = None if unicodedata.combining(chr(cp)) else cp
        return self[cp]


_STRIP_COMBINING = _StripCombining()


def normalize(text: str) -> str:
    """Lowercase, NFD-normalize, drop accents and punctuation, collapse whitespace."""
    text = text.lower()
    if not text.isascii():  # ASCII is its own NFD and has no combining characters
        text = unicodedata.normalize("NFD", text).translate(_STRIP_COMBINING)
    # Runs of punctuation, '_' and whitespace become one space: the words are what is left.
    return _SEPARATORS.sub(" ", text).strip()


def shingles(text: str, ngrams: int) -> set[str]:
    """Word n-grams of the normalized text; a text shorter than n words is one shingle.

    The reference (string) form of what ``shingle_hashes`` hashes: used by tests and benchmarks."""
    words = normalize(text).split()
    if not words:
        return set()
    if len(words) < ngrams:
        return {" ".join(words)}
    return {" ".join(words[i : i + ngrams]) for i in range(len(words) - ngrams + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _fmix(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer, elementwise (uint64 arithmetic wraps)."""
    x = x ^ (x >> _U(33))
    x *= _U(0xFF51AFD7ED558CCD)
    x ^= x >> _U(33)
    x *= _U(0xC4CEB9FE1A85EC53)
    x ^= x >> _U(33)
    return x


def _excl_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x), dtype=np.int64)
    np.cumsum(x[:-1], out=out[1:])
    return out


_WORD_BASE = _U(0x100000001B3)


@lru_cache(maxsize=4)
def _powers(n: int) -> np.ndarray:
    return np.cumprod(np.r_[_U(1), np.full(n - 1, _WORD_BASE, dtype=_U)], dtype=_U) if n else np.empty(0, _U)


@lru_cache(maxsize=8)
def _window_multipliers(ngrams: int) -> np.ndarray:
    return _fmix(np.arange(1, ngrams + 1, dtype=_U) * _U(0x9E3779B97F4A7C15)) | _U(1)


def _batches(texts: Sequence[str], limit: int = BATCH_BYTES) -> Iterator[tuple[int, int]]:
    start, size = 0, 0
    for i, t in enumerate(texts):
        size += len(t) + 1
        if size > limit and i > start:
            yield start, i
            start, size = i, len(t) + 1
    if start < len(texts):
        yield start, len(texts)


def _hash_batch(norm: Sequence[str], ngrams: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of already-normalized texts and each shingle's text index (ascending)."""
    buf = np.frombuffer("\n".join(norm).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    if not len(buf):
        return np.empty(0, _U), np.empty(0, np.int64)
    sep = (buf == 32) | (buf == 10)
    starts = np.flatnonzero(~sep & np.r_[True, sep[:-1]])
    ends = np.flatnonzero(~sep & np.r_[sep[1:], True]) + 1
    if not len(starts):
        return np.empty(0, _U), np.empty(0, np.int64)
    lengths = ends - starts
    word_text = np.cumsum(buf == 10)[starts]
    # Word hash: sum of byte * BASE**position-in-word, one reduceat over the word bytes.
    pos = np.arange(int(lengths.sum())) - np.repeat(_excl_cumsum(lengths), lengths)
    vals = buf[~sep].astype(_U) * _powers(int(lengths.max()))[pos]
    word = _fmix(np.add.reduceat(vals, _excl_cumsum(lengths)) ^ (lengths.astype(_U) * _U(0xA0761D6478BD642F)))
    # Windows of n words inside one text (a text shorter than n words is one window).
    per_text = np.bincount(word_text, minlength=len(norm))
    first = _excl_cumsum(per_text)
    nwin = np.where(per_text >= ngrams, per_text - ngrams + 1, (per_text > 0).astype(np.int64))
    win_text = np.repeat(np.arange(len(norm)), nwin)
    win_start = np.repeat(first, nwin) + np.arange(int(nwin.sum())) - np.repeat(_excl_cumsum(nwin), nwin)
    win_len = np.minimum(ngrams, per_text[win_text])
    acc = np.zeros(len(win_start), dtype=_U)
    mult = _window_multipliers(ngrams)
    for k in range(ngrams):
        inside = k < win_len
        acc += np.where(inside, word[np.minimum(win_start + k, len(word) - 1)] * mult[k], _U(0))
    return _fmix(acc ^ (win_len.astype(_U) * _U(0xE7037ED1A0B428DB))), win_text


def iter_shingle_hashes(texts: Sequence[str | None], ngrams: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``shingle_hashes`` a batch (≈1 MB of normalized text) at a time: memory stays per batch."""
    norm = [normalize(t) if isinstance(t, str) else "" for t in texts]
    for lo, hi in _batches(norm):
        h, t = _hash_batch(norm[lo:hi], ngrams)
        yield h, t + lo


def shingle_hashes(texts: Sequence[str | None], ngrams: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 hash of every shingle of ``texts`` (repeats included) and the index of its text
    (ascending). None and texts without words have none."""
    parts = list(iter_shingle_hashes(texts, ngrams))
    if not parts:
        return np.empty(0, _U), np.empty(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def shingle_sets(texts: Sequence[str | None], ngrams: int) -> tuple[np.ndarray, np.ndarray]:
    """Each text's distinct shingle hashes, sorted: (flat uint64 values, int64 offsets[len+1])."""
    h, t = shingle_hashes(texts, ngrams)
    order = np.lexsort((h, t))
    h, t = h[order], t[order]
    keep = np.r_[True, (h[1:] != h[:-1]) | (t[1:] != t[:-1])] if len(h) else np.zeros(0, bool)
    h, t = h[keep], t[keep]
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.bincount(t, minlength=len(texts)), out=offsets[1:])
    return h, offsets


# --------------------------------------------------------------------------- signatures and bands


@lru_cache(maxsize=8)
def _permutations(num_hashes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.random.PCG64(seed).random_raw(2 * num_hashes).astype(_U)
    return raw[:num_hashes] | _U(1), raw[num_hashes:]


def signatures(
    texts: Sequence[str | None], num_hashes: int, ngrams: int, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures uint32[len(texts), num_hashes] and shingle counts int64[len(texts)].

    A text without shingles has count 0 and an all-0xFFFFFFFF signature (it is never a candidate)."""
    a, b = _permutations(num_hashes, seed)
    sig = np.full((len(texts), num_hashes), 0xFFFFFFFF, dtype=np.uint32)
    count = np.zeros(len(texts), dtype=np.int64)
    chunk = max(1, (1 << 19) // num_hashes)  # ≤ 4 MB of uint64 per step
    for h, t in iter_shingle_hashes(texts, ngrams):
        count += np.bincount(t, minlength=len(texts))
        for c0 in range(0, len(h), chunk):
            hc, tc = h[c0 : c0 + chunk], t[c0 : c0 + chunk]
            m = np.multiply.outer(a, hc)  # (num_hashes, chunk): the reduction runs along contiguous rows
            m += b[:, None]
            starts = np.flatnonzero(np.r_[True, tc[1:] != tc[:-1]])
            mins = (np.minimum.reduceat(m, starts, axis=1) >> _U(32)).astype(np.uint32).T
            rows = tc[starts]
            sig[rows] = np.minimum(sig[rows], mins)
    return sig, count


def band_keys(sig: np.ndarray, num_bands: int) -> np.ndarray:
    """uint64[n, num_bands]: one key per band (the band's index is hashed in, so keys of
    different bands never meet in one bucket)."""
    n, h = sig.shape
    rows = sig.reshape(n, num_bands, h // num_bands).astype(_U)
    acc = np.broadcast_to(_fmix(np.arange(1, num_bands + 1, dtype=_U)), (n, num_bands)).copy()
    for j in range(h // num_bands):
        acc *= _U(0x9FB21C651E98DF25)
        acc += rows[:, :, j]
    return _fmix(acc)


def bucket_pairs(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first, other) of documents sharing a key: each bucket's first (smallest) document
    with each other member. ``keys``/``docs`` are parallel arrays of (band key, document)."""
    order = np.lexsort((docs, keys))
    keys, docs = keys[order], docs[order]
    starts = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    head = docs[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    other = docs != head
    return head[other], docs[other]


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs, sorted by a then b."""
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    keep = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.zeros(0, bool)
    return a[keep], b[keep]


# --------------------------------------------------------------------------- verification and clusters


@dataclass
class Features:
    """What verification compares, for some documents: ``ids`` (ascending) and either their
    shingle-hash sets (``values`` flat, ``offsets[len(ids)+1]``) or signatures (``values``
    uint32[len(ids), num_hashes], ``offsets`` None). ``values`` may be a memory map."""

    ids: np.ndarray
    values: np.ndarray
    offsets: np.ndarray | None = None

    def index(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.ids, ids)
        assert (
            len(ids) == 0 or (pos < len(self.ids)).all() and (self.ids[np.minimum(pos, len(self.ids) - 1)] == ids).all()
        ), "a paired document has no features"
        return pos


def _ragged(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    idx = np.repeat(starts - _excl_cumsum(lengths), lengths) + np.arange(int(lengths.sum()))
    return np.asarray(values[idx])


def similarity(fa: Features, a: np.ndarray, fb: Features, b: np.ndarray, max_elements: int = 1 << 22) -> np.ndarray:
    """Jaccard similarity of documents ``a[k]`` (in ``fa``) and ``b[k]`` (in ``fb``), float64[k]:
    exact on shingle sets, or the fraction of equal signature values. Vectorized over pairs, in
    chunks of at most ``max_elements`` set elements."""
    ia, ib = fa.index(a), fb.index(b)
    if fa.offsets is None:
        out = np.empty(len(a))
        step = max(1, max_elements // max(1, fa.values.shape[1]))
        for p0 in range(0, len(a), step):
            out[p0 : p0 + step] = (
                np.asarray(fa.values[ia[p0 : p0 + step]]) == np.asarray(fb.values[ib[p0 : p0 + step]])
            ).mean(axis=1)
        return out
    sa, la = fa.offsets[ia], fa.offsets[ia + 1] - fa.offsets[ia]
    sb, lb = fb.offsets[ib], fb.offsets[ib + 1] - fb.offsets[ib]
    out = np.empty(len(a))
    cum = np.cumsum(la + lb)
    p0 = 0
    while p0 < len(a):
        base = cum[p0 - 1] if p0 else 0
        p1 = max(p0 + 1, int(np.searchsorted(cum, base + max_elements, side="right")))
        m = p1 - p0
        vals = np.concatenate([_ragged(fa.values, sa[p0:p1], la[p0:p1]), _ragged(fb.values, sb[p0:p1], lb[p0:p1])])
        pid = np.concatenate([np.repeat(np.arange(m), la[p0:p1]), np.repeat(np.arange(m), lb[p0:p1])])
        order = np.lexsort((vals, pid))
        vals, pid = vals[order], pid[order]
        both = (vals[1:] == vals[:-1]) & (pid[1:] == pid[:-1])
        inter = np.bincount(pid[1:][both], minlength=m)
        union = la[p0:p1] + lb[p0:p1] - inter
        out[p0:p1] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        p0 = p1
    return out


def clusters(a: np.ndarray, b: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of the verified pairs (a[k], b[k]) with similarity j[k].

    Returns, sorted by document, each dropped document, the one it duplicates (its component's
    smallest document, which is kept) and the highest similarity of a verified pair it is in.
    Memory: the pairs and their distinct documents (about 40 bytes per pair)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(a):
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    ia, ib = inv[: len(a)], inv[len(a) :]
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # nodes are ascending: first member = smallest
    root = first[labels]
    best = np.zeros(len(nodes))
    np.maximum.at(best, ia, j)
    np.maximum.at(best, ib, j)
    dropped = np.flatnonzero(root != np.arange(len(nodes)))
    return nodes[dropped], nodes[root[dropped]], best[dropped]


# --------------------------------------------------------------------------- on text files


def _read_texts(paths: Sequence[Path]) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in paths]


def _file_batches(paths: Sequence[Path], limit: int) -> Iterator[tuple[int, int]]:
    start, size = 0, 0
    for i, p in enumerate(paths):
        size += p.stat().st_size
        if size > limit and i > start:
            yield start, i
            start, size = i, p.stat().st_size
    if start < len(paths):
        yield start, len(paths)


def candidate_pairs(
    key_batches: Iterable[tuple[np.ndarray, np.ndarray]],
    num_docs: int,
    memory_mb: float,
    work: Path,
    lo: int = 0,
    hi: int = 1 << 64,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Distinct candidate pairs from (band keys, documents) batches, in ascending order of the
    first document, as chunks. Keys and pairs spill to ``work`` past ``memory_mb``."""
    budget = group_budget(memory_mb)
    with (
        KeySpill(work / "keys", {"key": _U, "doc": np.int64}, budget, lo, hi) as keys,
        KeySpill(work / "pairs", {"key": _U, "other": np.int64}, budget, 0, max(1, num_docs)) as pairs,
    ):
        for k, d in key_batches:
            keys.add(key=k, doc=d)
        for group in keys.groups():
            first, other = bucket_pairs(group["key"], group["doc"])
            pairs.add(key=first.astype(_U), other=other)
        for group in pairs.groups():
            a, b = unique_pairs(group["key"].astype(np.int64), group["other"])
            if len(a):
                yield a, b


def minhash_dedup(
    input_paths: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    num_hashes: int,
    num_bands: int,
    ngrams: int,
    threshold: float,
    seed: int = 1,
    verify: str = "shingles",
    memory_mb: float = DEFAULT_MEMORY_MB,
    spill_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write to ``output_dir`` (same file names) the input files that are not near-duplicates.

    Reads a batch of files at a time; band keys, candidate pairs and the features of paired
    files spill to ``spill_dir`` (a temporary directory when None) past ``memory_mb``."""
    validate_params(num_hashes, num_bands, ngrams, threshold, verify)
    paths = [Path(p) for p in input_paths]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"input file {p} does not exist")
    batch_bytes = max(BATCH_BYTES, int(memory_mb * (1 << 20)) // 16)
    work = Path(tempfile.mkdtemp(prefix="lmpipe-minhash-", dir=spill_dir))
    try:
        sig_file = work / "signatures.u32"

        def keys() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            with reraise_disk_full(sig_file), open(sig_file, "wb") as f:
                for lo, hi in _file_batches(paths, batch_bytes):
                    sig, count = signatures(_read_texts(paths[lo:hi]), num_hashes, ngrams, seed)
                    f.write(sig.data)
                    live = np.flatnonzero(count > 0)
                    k = band_keys(sig[live], num_bands)
                    yield k.reshape(-1), np.repeat(live + lo, num_bands)

        pairs = list(candidate_pairs(keys(), len(paths), memory_mb, work))
        a = np.concatenate([p[0] for p in pairs]) if pairs else np.empty(0, np.int64)
        b = np.concatenate([p[1] for p in pairs]) if pairs else np.empty(0, np.int64)
        if verify == "signature":
            sigs = (
                np.memmap(sig_file, dtype=np.uint32, mode="r", shape=(len(paths), num_hashes))
                if paths
                else np.empty((0, num_hashes), np.uint32)
            )
            feats = Features(np.arange(len(paths)), sigs)
        else:
            feats = _file_shingle_sets(paths, np.unique(np.concatenate([a, b])), ngrams, batch_bytes, work)
        j = similarity(feats, a, feats, b)
        dropped, _, _ = clusters(a[j >= threshold], b[j >= threshold], j[j >= threshold])
        del feats
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        drop = set(dropped.tolist())
        written = []
        for i, p in enumerate(paths):
            if i not in drop:
                with reraise_disk_full(out / p.name):
                    shutil.copyfile(p, out / p.name)
                written.append(out / p.name)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _file_shingle_sets(
    paths: Sequence[Path], needed: np.ndarray, ngrams: int, batch_bytes: int, work: Path
) -> Features:
    """Shingle sets of the files ``needed`` (ascending indices), values spilled to a memory map."""
    values_file = work / "sets.u64"
    offsets = [np.zeros(1, np.int64)]
    total = 0
    with reraise_disk_full(values_file), open(values_file, "wb") as f:
        chosen = [paths[i] for i in needed]
        for lo, hi in _file_batches(chosen, batch_bytes):
            values, off = shingle_sets(_read_texts(chosen[lo:hi]), ngrams)
            f.write(values.data)
            offsets.append(off[1:] + total)
            total += len(values)
    values = np.memmap(values_file, dtype=_U, mode="r", shape=(total,)) if total else np.empty(0, _U)
    return Features(needed.astype(np.int64), values, np.concatenate(offsets))
