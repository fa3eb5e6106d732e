"""Pre-tokenization for training: a file → counts of distinct pre-tokens, in parallel.

The file is streamed in chunks of about ``chunk_bytes``; each chunk is decoded, split on
the special tokens (never merged across) and cut into GPT-2 pre-tokens, whose counts are
summed. Memory grows with the number of distinct pre-tokens, not with the file's size.

Chunks are cut where the result cannot change: right after a special token, or else
between an ASCII printable non-space byte and a space/newline (no pre-token of the GPT-2
regex spans such a point, the regex never looks behind, and the cut falls between whole
UTF-8 characters). Bytes that are not UTF-8 are decoded to U+FFFD and counted.
"""

from __future__ import annotations

import codecs
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence

import regex

from lm.tokenizer.gpt2 import GPT2_PATTERN

_PRETOKEN_RE = regex.compile(GPT2_PATTERN)
_WINDOW = 1 << 16  # bytes scanned past a target offset to find a cut point
# A printable non-space ASCII byte, then a space or newline: a cut point (see above).
_WS_CUT_RE = re.compile(rb"[\x21-\x7e][ \n]")

# Decoding with this handler replaces each bad byte run by U+FFFD and counts the runs.
_replaced = 0


def _count_replace(err: UnicodeDecodeError):
    global _replaced
    _replaced += 1
    return "\ufffd", err.end


codecs.register_error("lmpipe_count_replace", _count_replace)


def decode_counting(data: bytes) -> tuple[str, int]:
    """Decode UTF-8 with U+FFFD for invalid bytes; returns (text, number of bad byte runs)."""
    before = _replaced
    text = data.decode("utf-8", errors="lmpipe_count_replace")
    return text, _replaced - before


def special_split_pattern(special_tokens: Sequence[str]) -> regex.Pattern | None:
    """A capturing alternation of the specials, longest first (so overlaps match the longest)."""
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(s) for s in ordered) + ")")


def _straddles(window: bytes, s: bytes, cut: int) -> bool:
    j = window.find(s, max(0, cut - len(s) + 1))
    return 0 <= j < cut < j + len(s)


def _cut_after(window: bytes, specials: Sequence[bytes]) -> int | None:
    """Offset in ``window`` of a safe cut point (see the module docstring), or None."""
    best = None
    for s in specials:
        i = window.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    if best is not None and any(_straddles(window, s, best) for s in specials):
        best = None  # a longer special (an overlap such as "ab" inside "abc") runs across the cut
    if any(c in s for s in specials for c in b" \n"):
        return best  # a special holding whitespace could straddle a whitespace cut
    m = _WS_CUT_RE.search(window, 0, best if best is not None else len(window))
    return m.start() + 1 if m else best


def chunk_boundaries(path: str | os.PathLike, chunk_bytes: int, special_tokens: Sequence[str] = ()) -> list[int]:
    """Byte offsets [0, …, size] cutting ``path`` into chunks of about ``chunk_bytes``."""
    size = os.path.getsize(path)
    specials = [s.encode("utf-8") for s in special_tokens]
    bounds = [0]
    with open(path, "rb") as f:
        target = chunk_bytes
        while target < size:
            f.seek(target)
            window = f.read(_WINDOW)
            cut = _cut_after(window, specials)
            if cut is None:  # no cut point in the window: let this chunk grow
                target += _WINDOW
                continue
            if target + cut >= size:
                break
            bounds.append(target + cut)
            target = target + cut + chunk_bytes
    bounds.append(size)
    return bounds


def count_text(text: str, split_re: regex.Pattern | None) -> Counter:
    """Counts of distinct pre-tokens (as str) in ``text``, special tokens removed."""
    counts: Counter = Counter()
    parts = split_re.split(text) if split_re is not None else [text]
    # With a capturing split the specials sit at odd positions: skip them.
    for part in parts[::2] if split_re is not None else parts:
        if part:
            counts.update(_PRETOKEN_RE.findall(part))
    return counts


def _count_range(args: tuple[str, int, int, tuple[str, ...]]) -> tuple[dict[bytes, int], int, int]:
    path, start, end, special_tokens = args
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    text, bad = decode_counting(data)
    counts = count_text(text, special_split_pattern(special_tokens))
    return {k.encode("utf-8", "surrogatepass"): v for k, v in counts.items()}, bad, end - start


def iter_chunk_counts(
    path: str | os.PathLike, special_tokens: Sequence[str], num_workers: int, chunk_bytes: int
) -> Iterator[tuple[dict[bytes, int], int, int]]:
    """Yield (pre-token counts, bad byte runs, bytes) per chunk, from ``num_workers`` processes."""
    path = str(path)
    bounds = chunk_boundaries(path, chunk_bytes, special_tokens)
    jobs = [(path, a, b, tuple(special_tokens)) for a, b in zip(bounds[:-1], bounds[1:])]
    if num_workers <= 1 or len(jobs) <= 1:
        yield from map(_count_range, jobs)
        return
    import multiprocessing as mp

    # fork: workers start at once and need no importable __main__ (spawn would re-run an
    # unguarded calling script). The workers only read the file and run the regex.
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(min(num_workers, len(jobs))) as pool:
        # imap keeps at most a few chunks' results in flight; order does not matter for counts.
        yield from pool.imap_unordered(_count_range, jobs)


def count_pretokens(
    path: str | os.PathLike,
    special_tokens: Sequence[str] = (),
    *,
    num_workers: int | None = None,
    chunk_bytes: int = 4 << 20,
) -> tuple[dict[bytes, int], dict]:
    """Counts of distinct pre-tokens (UTF-8 bytes) in a file, and stats (bytes, replaced runs)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"training corpus {path} does not exist")
    size = os.path.getsize(path)
    if num_workers is None:
        num_workers = 1 if size < 2 * chunk_bytes else (os.cpu_count() or 1)
    total: Counter = Counter()
    stats = {"bytes": 0, "replaced": 0, "chunks": 0}
    for counts, bad, nbytes in iter_chunk_counts(path, special_tokens, num_workers, chunk_bytes):
        if total:
            total.update(counts)
        else:
            total = Counter(counts)
        stats["bytes"] += nbytes
        stats["replaced"] += bad
        stats["chunks"] += 1
    stats["distinct_pretokens"] = len(total)
    return total, stats  # a Counter is a dict: no copy (it is the biggest object at this point)
