"""Tokenizer: GPT-2 ids equal tiktoken's, round trips, specials, encode_iterable, fast path."""

import subprocess
import sys
import textwrap
import tracemalloc

import pytest

from lm.tokenizer import Tokenizer, train_bpe
from lm.tokenizer.gpt2 import EOT

STRINGS = [
    "",
    "s",
    " ",
    "\n",
    "!",
    "é",
    "世",
    "🙃",
    "👨‍👩‍👧‍👦",
    "Héllò hôw are ü? 🙃",
    "Мама мыла раму. 東京は晴れ。 مرحبا بالعالم  \t\n\n  x",
    "1234567890 3.14159 $1,000,000 it's we'll they've I'M",
    "   leading and trailing spaces   ",
    "line\r\nwindows\rmac\n\n\n",
]


@pytest.mark.parametrize("text", STRINGS)
def test_gpt2_ids_equal_tiktoken_on_strings(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text)
    assert gpt2.decode(ids) == text


@pytest.mark.parametrize("name", ["address.txt", "german.txt", "tinystories_sample.txt"])
def test_gpt2_ids_equal_tiktoken_on_fixture_files(gpt2, tiktoken_gpt2, fixtures, name):
    text = (fixtures / name).read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special={EOT})
    assert gpt2.decode(ids) == text
    if name == "tinystories_sample.txt":
        assert ids.count(50256) == text.count(EOT) > 0


def test_gpt2_eot_and_size(gpt2):
    assert gpt2.eot_id == 50256
    assert gpt2.vocab_size == 50257
    assert gpt2.encode("Hello" + EOT) == [15496, 50256]


def test_overlapping_special_tokens_longest_match(fixtures):
    double = EOT + EOT
    with pytest.warns(UserWarning, match="not in the vocab"):
        tok = Tokenizer.from_files(fixtures / "gpt2_vocab.json", fixtures / "gpt2_merges.txt", [EOT, double])
    ids = tok.encode("Hello, how " + double + " are you?" + EOT)
    assert ids.count(tok.special_ids[double]) == 1
    assert ids.count(tok.special_ids[EOT]) == 1
    assert tok.decode(ids) == "Hello, how " + double + " are you?" + EOT
    # The same through the stream encoder, with the double token split across pieces.
    pieces = ["Hello, how <|endof", "text|><|end", "oftext|> are you?<|endoftext|>"]
    assert list(tok.encode_iterable(pieces)) == ids


def test_decode_invalid_utf8_gives_replacement_char(gpt2):
    # Byte 0xA4 alone (id 94 in GPT-2's byte table order is not needed: look it up).
    lone = gpt2.encoder[b"\xa4"]
    assert gpt2.decode([lone]) == "\ufffd"
    with pytest.raises(ValueError, match="token id 99999999 is not in the vocab"):
        gpt2.decode([1, 99999999])


def test_encode_iterable_equals_encode_on_file(gpt2, fixtures):
    path = fixtures / "tinystories_sample.txt"
    with open(path, encoding="utf-8") as f:
        streamed = list(gpt2.encode_iterable(f))
    assert streamed == gpt2.encode(path.read_text(encoding="utf-8"))
    # Odd piece boundaries (mid-word, mid-whitespace) change nothing.
    text = (fixtures / "german.txt").read_text(encoding="utf-8") + "  \n\n  x"
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert list(gpt2.encode_iterable(pieces)) == gpt2.encode(text)


def _real_text_stream(words: list[str], num_chars: int, seed: int = 0):
    """Lines of real words in random order, with numbers: new pre-tokens keep coming."""
    import random

    rng = random.Random(seed)
    made = 0
    while made < num_chars:
        line = " ".join(rng.choice(words) for _ in range(12)) + f" {rng.randrange(10**9)}.\n"
        made += len(line)
        yield line


def test_encode_iterable_memory_is_flat_python_path(gpt2, fixtures):
    words = (fixtures / "corpus.en").read_text(encoding="utf-8").split()

    def peak(num_chars):
        tracemalloc.start()
        n = sum(1 for _ in gpt2.encode_iterable(_real_text_stream(words, num_chars)))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return n, top

    gpt2.cache_size = 2000  # reached within the small run, so both runs see a full cache
    try:
        small_n, small = peak(100_000)
        big_n, big = peak(400_000)
    finally:
        gpt2.cache_size = 1 << 16
    assert big_n > 3.5 * small_n
    # 4x the input, yet the peak stays put: a bounded cache and one block of buffered text.
    assert big < 1.2 * small + 200_000, (small, big)


def test_encode_iterable_memory_is_flat_fast_path(fixtures, tmp_path):
    """Peak RSS of a subprocess streaming 2 MB vs 16 MB through the tiktoken path."""
    script = textwrap.dedent(
        f"""
        import random, resource, sys
        from lm.tokenizer import Tokenizer
        F = {str(fixtures)!r}
        tok = Tokenizer.from_files(F + "/gpt2_vocab.json", F + "/gpt2_merges.txt", ["<|endoftext|>"])
        assert tok.fast_path is not None
        words = open(F + "/corpus.en", encoding="utf-8").read().split()
        def stream(n, rng=random.Random(0)):
            made = 0
            while made < n:
                line = " ".join(rng.choice(words) for _ in range(12)) + " %d.\\n" % rng.randrange(10**9)
                made += len(line)
                yield line
        count = sum(1 for _ in tok.encode_iterable(stream(int(sys.argv[1]))))
        print(count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    out = {}
    for size in (2_000_000, 16_000_000):
        res = subprocess.run(
            [sys.executable, "-c", script, str(size)], capture_output=True, text=True, check=True, env=_env()
        )
        count, rss_kb = map(int, res.stdout.split())
        out[size] = (count, rss_kb)
    assert out[16_000_000][0] > 7 * out[2_000_000][0]
    assert out[16_000_000][1] - out[2_000_000][1] < 10_000, out  # < 10 MB more RSS for 8x the input


def _env():
    import os
    from pathlib import Path

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_fast_path_equals_python_on_large_real_text(reference, gsm8k_text, tmp_path):
    # A tokenizer of our own, trained on real text, then both paths on other real text.
    corpus = tmp_path / "alpaca.txt"
    corpus.write_text(
        (reference / "assignment5-alignment/data/alpaca_eval/alpaca_eval.jsonl").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    vocab, merges = train_bpe(corpus, 3000, [EOT])
    fast = Tokenizer(vocab, merges, [EOT])
    slow = Tokenizer(vocab, merges, [EOT], use_fast=False)
    assert fast.fast_path is not None, fast.fast_path_reason
    assert slow.fast_path is None
    text = gsm8k_text[:3_000_000]
    ids = slow.encode(text)
    assert len(ids) > 500_000
    assert fast.encode(text) == ids
    assert fast.encode_ordinary(text) == ids
    docs = text.split("\n\n")[:2000]
    assert fast.encode_batch(docs) == [slow.encode(d) for d in docs]


def test_lone_surrogates_encode_like_tiktoken(gpt2, tiktoken_gpt2):
    for text in ["abc\ud800def", "\udfff", "pair \ud83d\ude00 joined", "x\ud83d"]:
        ids = gpt2.encode(text)
        assert ids == tiktoken_gpt2.encode(text)
        assert "\ud800" not in gpt2.decode(ids)
    assert gpt2.decode(gpt2.encode("abc\ud800def")) == "abc\ufffddef"
