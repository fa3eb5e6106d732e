"""train_bpe: the CS336 reference merges/vocab, parallel chunking, specials, bad input."""

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lm.tokenizer import train_bpe
from lm.tokenizer.gpt2 import EOT, decode_token
from lm.tokenizer.pretokenize import chunk_boundaries, count_pretokens
from lm.tokenizer.train import _inverse_key, merge_words


def _reference(fixtures):
    merges = [
        tuple(decode_token(t) for t in line.rstrip("\n").split(" "))
        for line in (fixtures / "train-bpe-reference-merges.txt").open(encoding="utf-8")
    ]
    vocab = json.loads((fixtures / "train-bpe-reference-vocab.json").read_text(encoding="utf-8"))
    return merges, {k.encode() if k == EOT else decode_token(k) for k in vocab}, set(vocab.values())


def test_corpus_en_matches_reference_merges_and_vocab(fixtures):
    ref_merges, ref_tokens, ref_ids = _reference(fixtures)
    start = time.perf_counter()
    vocab, merges = train_bpe(fixtures / "corpus.en", 500, [EOT])
    elapsed = time.perf_counter() - start
    assert merges == ref_merges  # exact, in order
    assert set(vocab.values()) == ref_tokens
    assert set(vocab.keys()) == ref_ids
    assert elapsed < 1.5, f"corpus.en/500 took {elapsed:.2f}s (target < 0.5 s on an idle core)"


def test_vocab_layout_bytes_then_specials_then_merges(fixtures):
    vocab, merges = train_bpe(fixtures / "corpus.en", 300, [EOT, "<pad>"])
    assert [vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]
    assert vocab[256] == EOT.encode() and vocab[257] == b"<pad>"
    assert [vocab[258 + i] for i in range(len(merges))] == [a + b for a, b in merges]
    assert len(vocab) == 300


def test_parallel_small_chunks_equal_single_chunk(fixtures, tmp_path):
    # Real text with non-ASCII, specials and odd whitespace, cut into many 4 KB chunks.
    text = "".join(
        (fixtures / n).read_text(encoding="utf-8") + EOT
        for n in ("tinystories_sample.txt", "german.txt", "address.txt", "corpus.en")
    )
    path = tmp_path / "mixed.txt"
    path.write_text(text + "  \n\n   trailing  ", encoding="utf-8")
    bounds = chunk_boundaries(path, 4096, [EOT])
    assert len(bounds) > 20 and bounds == sorted(bounds)
    serial = train_bpe(path, 600, [EOT], num_workers=1, chunk_bytes=1 << 30)
    parallel = train_bpe(path, 600, [EOT], num_workers=2, chunk_bytes=4096)
    assert parallel == serial
    # Without specials the cuts fall at whitespace; the counts must not change either.
    assert (
        count_pretokens(path, [], num_workers=2, chunk_bytes=2048)[0]
        == count_pretokens(path, [], num_workers=1, chunk_bytes=1 << 30)[0]
    )


def test_special_tokens_split_and_are_never_merged(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text(("xyz" + EOT + "yzx") * 200, encoding="utf-8")
    vocab, merges = train_bpe(path, 270, [EOT])
    tokens = [a + b for a, b in merges]
    assert all(b"<" not in t and b">" not in t for t in tokens)  # "<|" never merged with text
    assert EOT.encode() in vocab.values()


def test_ties_go_to_the_lexicographically_greater_pair():
    a, b, c, d = b"a"[0], b"b"[0], b"c"[0], b"d"[0]
    vocab, merges = merge_words([[a, b], [c, d], [b, c]], [3, 3, 3], 259, [])
    assert merges == [(b"c", b"d"), (b"b", b"c"), (b"a", b"b")]
    # Equal counts, left tokens b"ab" vs b"a" (a prefix): b"ab" is greater, so (ab, x) wins.
    vocab, merges = merge_words([[a, b, c], [a, b, c], [a, d], [a, d], [a, b]], [1, 1, 1, 1, 1], 259, [])
    assert merges == [(b"a", b"b"), (b"ab", b"c"), (b"a", b"d")]
    # Bytes, not ids: b"b" (id 98) beats b"ab" (id 256) as a left token.
    vocab, merges = merge_words([[a, b, c], [a, b, c], [b, d], [b, d], [a, b]], [1, 1, 1, 1, 1], 259, [])
    assert merges == [(b"a", b"b"), (b"b", b"d"), (b"ab", b"c")]


@given(st.binary(max_size=6), st.binary(max_size=6))
def test_heap_key_reverses_byte_order(x, y):
    # heapq pops the smallest key; the key must order tokens as descending bytes.
    assert (_inverse_key(x) < _inverse_key(y)) == (x > y)


def test_non_utf8_input_is_replaced_and_counted(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café naïve déjà vu ".encode("latin-1") * 50 + b"plain text\n")
    stats = {}
    vocab, merges = train_bpe(path, 262, [], stats=stats)
    assert stats["replaced"] == 4 * 50  # é ï é à: one bad byte each
    # U+FFFD (EF BF BD) is now the most frequent sequence: the first two merges build it.
    assert merges[:2] == [(b"\xef", b"\xbf"), (b"\xef\xbf", b"\xbd")]


@pytest.mark.parametrize("size", [0, 255, 256])
def test_vocab_size_smaller_than_bytes_plus_specials(fixtures, size):
    with pytest.raises(ValueError, match=r"vocab_size=.* at least 256 .* 1 special token\(s\) = 257"):
        train_bpe(fixtures / "corpus.en", size, [EOT])


def test_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_bpe(tmp_path / "nope.txt", 300, [])
