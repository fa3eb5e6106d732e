"""Fuzz the BPE tokenizer (lm.tokenizer): training on random Unicode with special tokens,
encode/decode round trips, decoding arbitrary ids, and the tiktoken fast path vs pure Python.

Properties:

- ``train_bpe`` on any text (random code points, no lone surrogates) and any special tokens
  returns 256 byte tokens + the specials + one token per merge, each merge the concatenation
  it names, within the wall limit; the result builds a ``Tokenizer``;
- ``decode(encode(s)) == s`` for every ``str`` without lone surrogates (special tokens in ``s``
  included), through the fast path and the pure-Python path, which give the same ids; a lone
  surrogate becomes U+FFFD (``sanitize``), as tiktoken does;
- ``encode_iterable`` over any split of ``s`` gives ``encode(s)``;
- decoding any list of in-vocab ids gives the vocab bytes decoded with U+FFFD for invalid
  UTF-8 (never raises); an id outside the vocab, a negative id or a non-int raises
  ``ValueError`` naming it.
"""

from __future__ import annotations

import pytest
from fuzzkit import call_with_timeout, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from lm.tokenizer import Tokenizer, train_bpe
from lm.tokenizer.gpt2 import EOT
from lm.tokenizer.tokenizer import sanitize

# Any code point except surrogates; weighted toward what breaks things: ASCII, whitespace,
# combining marks, emoji (4-byte UTF-8), private use and noncharacters.
CODEPOINTS = st.characters(exclude_categories=["Cs"])
SPECIAL_TEXT = st.sampled_from(
    [EOT, "<|pad|>", "<|endoftext|><|endoftext|>", "<s>", "</s>", "\n\n", " ", "<|é|>", "🙂"]
)
TEXTS = st.lists(
    st.one_of(
        st.text(CODEPOINTS, max_size=30), st.text(st.sampled_from(" \t\n\r\u00a0\u3000'sll"), max_size=6), SPECIAL_TEXT
    ),
    max_size=12,
).map("".join)


@pytest.fixture(scope="module")
def gpt2_pair(reference):
    fx = reference / "assignment1-basics" / "fixtures"
    with pytest.warns(UserWarning, match="appending it"):  # <|pad|> is not in GPT-2's vocab: a new id
        fast = Tokenizer.from_files(fx / "gpt2_vocab.json", fx / "gpt2_merges.txt", [EOT, "<|pad|>"])
    slow = Tokenizer(fast.vocab, fast.merges, fast.special_tokens, use_fast=False)
    assert fast.fast_path is not None, fast.fast_path_reason
    return fast, slow


def _train(tmp_path, text: str, num_merges: int, specials: list[str]) -> tuple[dict, list]:
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    specials = list(dict.fromkeys(specials))
    return call_with_timeout(train_bpe, path, 256 + len(specials) + num_merges, specials)


def test_train_on_random_unicode(tmp_path):
    @fuzz_settings(ci_examples=40)
    @given(
        text=TEXTS,
        extra=st.text(CODEPOINTS, min_size=1, max_size=200),
        num_merges=st.integers(0, 60),
        specials=st.lists(SPECIAL_TEXT, max_size=3),
        probe=TEXTS,
    )
    def run(text, extra, num_merges, specials, probe):
        corpus = text + extra + text  # repeats give pairs worth merging
        vocab, merges = _train(tmp_path, corpus, num_merges, specials)
        uniq = list(dict.fromkeys(specials))
        assert [vocab[i] for i in range(256)] == [bytes([i]) for i in range(256)]
        assert [vocab[256 + i] for i in range(len(uniq))] == [s.encode() for s in uniq]
        assert len(vocab) == 256 + len(uniq) + len(merges) and len(merges) <= num_merges
        for k, (a, b) in enumerate(merges):
            assert vocab[256 + len(uniq) + k] == a + b
        fast = Tokenizer(vocab, merges, uniq)
        slow = Tokenizer(vocab, merges, uniq, use_fast=False)
        for s in (corpus, probe):
            ids = slow.encode(s)
            assert slow.decode(ids) == s
            if fast.fast_path is not None:
                assert fast.encode(s) == ids
                assert fast.encode_ordinary(s) == slow.encode_ordinary(s)

    run()


@fuzz_settings(ci_examples=500)
@given(s=TEXTS)
def test_round_trip_gpt2(gpt2_pair, s):
    fast, slow = gpt2_pair
    ids = call_with_timeout(slow.encode, s)
    assert call_with_timeout(fast.encode, s) == ids
    assert fast.decode(ids) == s
    assert fast.encode_ordinary(s) == slow.encode_ordinary(s)


@fuzz_settings(ci_examples=100)
@given(s=st.text(st.characters(codec="utf-16", categories=["Cs", "Ll", "Zs"]), max_size=20))
def test_lone_surrogates_become_replacement(gpt2_pair, s):
    fast, slow = gpt2_pair
    ids = slow.encode(s)
    assert fast.encode(s) == ids
    assert fast.decode(ids) == sanitize(s)
    assert "\ud800" <= s[:1] <= "\udfff" or not s or fast.decode(ids)[:1] == s[:1]


@fuzz_settings(ci_examples=100)
@given(s=TEXTS, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_encode_iterable_matches_encode(gpt2_pair, s, cuts):
    fast, _ = gpt2_pair
    points = sorted({c % (len(s) + 1) for c in cuts})
    pieces = [s[a:b] for a, b in zip([0, *points], [*points, len(s)])]
    assert list(fast.encode_iterable(pieces)) == fast.encode(s)


@fuzz_settings(ci_examples=200)
@given(ids=st.lists(st.integers(0, 50257 + 1), max_size=40))
def test_decode_in_vocab_ids_replaces_invalid_utf8(gpt2_pair, ids):
    fast, _ = gpt2_pair
    ids = [i % len(fast.vocab) for i in ids]
    out = fast.decode(ids)
    assert out == b"".join(fast.vocab[i] for i in ids).decode("utf-8", "replace")
    out.encode("utf-8")  # valid Unicode, whatever the bytes


@fuzz_settings(ci_examples=100)
@given(
    good=st.lists(st.integers(0, 255), max_size=10),
    bad=st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=50258),
        st.floats(allow_nan=True),
        st.text(max_size=3),
        st.none(),
        st.just(3.0),
    ),
    at=st.integers(0, 10),
)
def test_decode_rejects_ids_outside_the_vocab(gpt2_pair, good, bad, at):
    fast, _ = gpt2_pair
    ids = good[:at] + [bad] + good[at:]
    with pytest.raises(ValueError, match="not in the vocab"):
        fast.decode(ids)


@fuzz_settings(ci_examples=100)
@given(data=st.binary(max_size=60))
def test_decode_of_raw_bytes_is_replacement_decoding(gpt2_pair, data):
    """Byte tokens spelling invalid UTF-8 (truncated sequences, overlongs, surrogates encoded
    in UTF-8, stray continuation bytes) decode with U+FFFD, like bytes.decode(errors='replace')."""
    fast, _ = gpt2_pair
    ids = [fast.byte_ids[b] for b in data]
    assert fast.decode(ids) == data.decode("utf-8", "replace")


@pytest.mark.parametrize("bad", [3.0, 1.5, "3", None, float("nan")])
def test_decode_rejects_float_and_str_ids(gpt2_pair, bad):
    """Found by test_decode_rejects_ids_outside_the_vocab: ``decode([3.0])`` returned token 3's
    text (a float equal to an int finds the same dict key) instead of refusing a non-integer id."""
    fast, _ = gpt2_pair
    with pytest.raises(ValueError, match=r"token id .* is not in the vocab"):
        fast.decode([10, bad])


def test_decode_accepts_numpy_integers(gpt2_pair):
    import numpy as np

    fast, _ = gpt2_pair
    assert (
        fast.decode(np.array([15496, 995], dtype=np.uint16).tolist())
        == fast.decode(list(np.array([15496, 995], dtype=np.int64)))
        == "Hello world"
    )


@pytest.mark.parametrize("text", ["A\U0003d000", "a\u0558b", "x\U00018d80\U00018d81 1\U0003fc3f"])
def test_fast_path_agrees_on_characters_newer_than_pythons_unicode(tmp_path, text):
    """Found by test_train_on_random_unicode: trained on "A\\U0003d000" (unassigned in Python
    3.11's Unicode 14, a letter to the newer tables of the ``regex`` module, unknown to
    tiktoken's engine), the fast path gave [259, 48, 259] where the Python path gave
    [65, 258, 48, 65, 258]: the engines cut pre-tokens differently."""
    corpus = text + "0" + text
    vocab, merges = _train(tmp_path, corpus, 4, [])
    fast, slow = Tokenizer(vocab, merges), Tokenizer(vocab, merges, use_fast=False)
    assert fast.fast_path is not None
    for s in (corpus, text):
        assert fast.encode(s) == fast.encode_ordinary(s) == slow.encode(s)
        assert fast.encode_batch([s, "plain ascii"]) == [slow.encode(s), slow.encode("plain ascii")]
        assert fast.decode(fast.encode(s)) == s
