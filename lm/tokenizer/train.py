"""Byte-level BPE training (CS336 assignment 1 semantics), fast enough for real corpora.

    vocab, merges = train_bpe("corpus.txt", vocab_size=10_000, special_tokens=["<|endoftext|>"])

The vocabulary is the 256 single bytes (ids 0-255), then the special tokens, then one token
per merge in order. Each step merges the most frequent adjacent pair of tokens inside
pre-tokens; ties go to the lexicographically greater pair, comparing (left bytes, right
bytes). Special tokens only split the text: no merge crosses them.

Where the time goes and what we do about it:
- pre-tokenization (most of it on big corpora) runs over chunks of the file in parallel
  processes and only counts distinct pre-tokens (``lm.tokenizer.pretokenize``);
- merging keeps pair counts and, per pair, the set of words that contain it, so a merge
  touches only those words; a heap with lazy deletion yields the best pair in O(log n).
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Iterable, Mapping

from lm.tokenizer.pretokenize import count_pretokens


def check_vocab_size(vocab_size: int, special_tokens: Iterable[str]) -> None:
    specials = list(dict.fromkeys(special_tokens))
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: it must be at least 256 (one token per byte) "
            f"+ {len(specials)} special token(s) = {256 + len(specials)}"
        )


def _inverse_key(token: bytes) -> str:
    """A string whose ascending order is the descending order of ``token`` as bytes.

    heapq is a min-heap; to pop the lexicographically greatest pair first we compare these
    keys instead. chr(256) ends every key so that a longer token sorts before its prefix.
    """
    return "".join(chr(255 - b) for b in token) + chr(256)


def merge_counts(word_counts: Mapping[bytes, int], vocab_size: int, special_tokens: list[str]) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """The BPE merge loop over distinct pre-tokens and their counts."""
    vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
    for s in special_tokens:
        vocab[len(vocab)] = s.encode("utf-8")
    inv = {i: _inverse_key(t) for i, t in vocab.items()}

    words: list[list[int]] = []  # distinct pre-tokens as token ids
    counts: list[int] = []
    for w, c in word_counts.items():
        if len(w) > 1:  # a single byte has no pair to merge
            words.append(list(w))
            counts.append(c)

    pair_counts: dict[tuple[int, int], int] = {}
    pair_words: dict[tuple[int, int], set[int]] = {}
    for wi, (w, c) in enumerate(zip(words, counts)):
        for p in zip(w, w[1:]):
            pair_counts[p] = pair_counts.get(p, 0) + c
            s = pair_words.get(p)
            if s is None:
                pair_words[p] = {wi}
            else:
                s.add(wi)
    heap = [(-c, inv[a], inv[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(vocab) < vocab_size and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg or neg == 0:
            continue  # stale entry: the pair's count changed after it was pushed
        new_id = len(vocab)
        vocab[new_id] = vocab[a] + vocab[b]
        inv[new_id] = _inverse_key(vocab[new_id])
        merges.append((vocab[a], vocab[b]))

        changed: dict[tuple[int, int], int] = {}
        for wi in pair_words.pop((a, b)):
            w = words[wi]
            c = counts[wi]
            # Merge left to right (non-overlapping, as in "aaa" -> "aa" "a").
            out: list[int] = []
            i, n = 0, len(w)
            while i < n:
                if i + 1 < n and w[i] == a and w[i + 1] == b:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            for p in zip(w, w[1:]):
                changed[p] = changed.get(p, 0) - c
            for p in zip(out, out[1:]):
                changed[p] = changed.get(p, 0) + c
            old_pairs = set(zip(w, w[1:]))
            new_pairs = set(zip(out, out[1:]))
            for p in old_pairs - new_pairs:
                s = pair_words.get(p)
                if s is not None:
                    s.discard(wi)
            for p in new_pairs - old_pairs:
                s = pair_words.get(p)
                if s is None:
                    pair_words[p] = {wi}
                else:
                    s.add(wi)
            words[wi] = out
        pair_counts.pop((a, b), None)
        changed.pop((a, b), None)
        for p, d in changed.items():
            if d == 0:
                continue
            c = pair_counts.get(p, 0) + d
            if c > 0:
                pair_counts[p] = c
                heapq.heappush(heap, (-c, inv[p[0]], inv[p[1]], p[0], p[1]))
            else:
                pair_counts.pop(p, None)
                pair_words.pop(p, None)
        # Stale entries pile up; rebuild when the heap is much larger than the live pairs.
        if len(heap) > 4 * len(pair_counts) + 100_000:
            heap = [(-c, inv[x], inv[y], x, y) for (x, y), c in pair_counts.items()]
            heapq.heapify(heap)
    return vocab, merges


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str] | None = None,
    *,
    num_workers: int | None = None,
    chunk_bytes: int = 4 << 20,
    stats: dict | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train byte-level BPE on a UTF-8 text file. Returns (vocab id -> bytes, merges in order).

    ``num_workers``: pre-tokenization processes (default: all cores for files over 8 MB).
    ``stats``: if given, filled with bytes read, U+FFFD replacements, distinct pre-tokens
    and timings.
    """
    special_tokens = list(dict.fromkeys(special_tokens or []))
    check_vocab_size(vocab_size, special_tokens)
    t0 = time.perf_counter()
    word_counts, pre_stats = count_pretokens(input_path, special_tokens, num_workers=num_workers, chunk_bytes=chunk_bytes)
    t1 = time.perf_counter()
    vocab, merges = merge_counts(word_counts, vocab_size, special_tokens)
    if stats is not None:
        stats.update(pre_stats)
        stats.update(pretokenize_seconds=round(t1 - t0, 3), merge_seconds=round(time.perf_counter() - t1, 3), num_merges=len(merges))
    return vocab, merges
