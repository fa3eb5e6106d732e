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
from array import array
from collections import defaultdict
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


def merge_counts(
    word_counts: Mapping[bytes, int], vocab_size: int, special_tokens: list[str]
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """The BPE merge loop over distinct pre-tokens and their counts."""
    words: list[list[int]] = []  # distinct pre-tokens as token ids
    counts: list[int] = []
    for w, c in word_counts.items():
        if len(w) > 1:  # a single byte has no pair to merge
            words.append(list(w))
            counts.append(c)
    return merge_words(words, counts, vocab_size, special_tokens)


def merge_words(
    words: list[list[int]], counts: list[int], vocab_size: int, special_tokens: list[str]
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """The merge loop; ``words`` (pre-tokens as byte ids) are rewritten in place."""
    vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
    for s in special_tokens:
        vocab[len(vocab)] = s.encode("utf-8")
    inv = {i: _inverse_key(t) for i, t in vocab.items()}

    # pair -> total count, and pair -> indices of words that contain (or once contained) it.
    # The index is append-only (uint32 arrays: 4 bytes an entry); a word that lost the pair
    # is found stale when the pair is merged and skipped, which is cheaper than deleting.
    pair_counts: dict[tuple[int, int], int] = {}
    pair_words: dict[tuple[int, int], array] = {}
    for wi, (w, c) in enumerate(zip(words, counts)):
        for p in zip(w, w[1:]):
            pair_counts[p] = pair_counts.get(p, 0) + c
        for p in set(zip(w, w[1:])):
            idx = pair_words.get(p)
            if idx is None:
                pair_words[p] = array("I", (wi,))
            else:
                idx.append(wi)
    heap = [(-c, inv[a], inv[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(vocab) < vocab_size and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg:
            continue  # stale entry: the pair's count changed after it was pushed
        c_new = len(vocab)
        vocab[c_new] = vocab[a] + vocab[b]
        inv[c_new] = _inverse_key(vocab[c_new])
        merges.append((vocab[a], vocab[b]))

        delta: defaultdict[tuple[int, int], int] = defaultdict(int)
        for wi in set(pair_words.pop((a, b))):
            w = words[wi]
            n = len(w)
            # Occurrences of (a, b), left to right and non-overlapping ("a a a" -> "aa a").
            # list.index scans in C; most words hold the pair once.
            pos: list[int] = []
            i = 0
            try:
                while True:
                    i = w.index(a, i)
                    if i + 1 < n and w[i + 1] == b:
                        pos.append(i)
                        i += 2
                    else:
                        i += 1
            except ValueError:
                pass
            if not pos:
                continue  # stale index entry: the word lost the pair to an earlier merge
            c = counts[wi]
            # Only the pairs next to each merge change: (x, a) -> (x, ab), (b, y) -> (ab, y).
            last = len(pos) - 1
            for k, i in enumerate(pos):
                if i > 0:
                    if k and pos[k - 1] == i - 2:
                        delta[(c_new, c_new)] += c  # (b, a) was removed by the previous merge
                    else:
                        x = w[i - 1]
                        delta[(x, a)] -= c
                        delta[(x, c_new)] += c
                        _index_add(pair_words, (x, c_new), wi)
                if i + 2 < n:
                    y = w[i + 2]
                    delta[(b, y)] -= c
                    if not (k < last and pos[k + 1] == i + 2):
                        delta[(c_new, y)] += c
                        _index_add(pair_words, (c_new, y), wi)
            if last and (c_new, c_new) in delta:
                _index_add(pair_words, (c_new, c_new), wi)
            for i in reversed(pos):  # right to left so earlier positions stay valid
                w[i : i + 2] = (c_new,)
        pair_counts.pop((a, b), None)
        delta.pop((a, b), None)
        push = heapq.heappush
        for p, d in delta.items():
            if d == 0:
                continue
            c = pair_counts.get(p, 0) + d
            if c > 0:
                pair_counts[p] = c
                push(heap, (-c, inv[p[0]], inv[p[1]], p[0], p[1]))
            else:
                pair_counts.pop(p, None)
                pair_words.pop(p, None)
        # Stale entries pile up; rebuild when the heap is much larger than the live pairs.
        if len(heap) > 4 * len(pair_counts) + 100_000:
            heap = [(-c, inv[x], inv[y], x, y) for (x, y), c in pair_counts.items()]
            heapq.heapify(heap)
    return vocab, merges


def _index_add(pair_words: dict, p: tuple[int, int], wi: int) -> None:
    idx = pair_words.get(p)
    if idx is None:
        pair_words[p] = array("I", (wi,))
    elif idx[-1] != wi:  # cheap de-duplication: the same word is usually added twice in a row
        idx.append(wi)


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
    word_counts, pre_stats = count_pretokens(
        input_path, special_tokens, num_workers=num_workers, chunk_bytes=chunk_bytes
    )
    t1 = time.perf_counter()
    words = [list(w) for w in word_counts if len(w) > 1]  # single bytes have no pair to merge
    counts = [c for w, c in word_counts.items() if len(w) > 1]
    del word_counts  # the merge loop's own structures replace it: keep the peak down
    vocab, merges = merge_words(words, counts, vocab_size, special_tokens)
    if stats is not None:
        stats.update(pre_stats)
        stats.update(
            pretokenize_seconds=round(t1 - t0, 3),
            merge_seconds=round(time.perf_counter() - t1, 3),
            num_merges=len(merges),
        )
    return vocab, merges
