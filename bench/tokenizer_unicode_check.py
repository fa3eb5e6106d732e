"""Benchmark: the cost of the fast path's Unicode check (``fast_path_ok``) next to tiktoken itself.

    nice -n 10 python bench/tokenizer_unicode_check.py      # a few seconds

Text with characters newer than Python's Unicode database is encoded in Python (tiktoken's
regex engine cuts them into other pre-tokens; see lm/tokenizer/tokenizer.py). Every
non-ASCII text is checked first. Measured on real non-ASCII text (the CS336 german.txt
fixture, and Japanese sentences), one thread, best of 5: tiktoken's
``encode_ordinary_batch`` on our GPT-2 merges, our ``Tokenizer.encode_batch`` (check +
tiktoken), and the check alone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lm.tokenizer import Tokenizer
from lm.tokenizer.tokenizer import fast_path_ok, newer_unicode

REFERENCE = Path(os.environ.get("LMPIPE_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    fx = REFERENCE / "assignment1-basics" / "fixtures"
    tok = Tokenizer.from_files(fx / "gpt2_vocab.json", fx / "gpt2_merges.txt", ["<|endoftext|>"])
    fast = tok.fast_path
    t0 = time.perf_counter()
    newer_unicode()
    print(f"building the code-point table (once per process): {time.perf_counter() - t0:.2f} s")
    corpora = {"german": [(fx / "german.txt").read_text(encoding="utf-8")] * 400,
               "japanese": ["日本語のテキストです。東京は大きな都市です。" * 500] * 40}
    for name, docs in corpora.items():
        chars = sum(map(len, docs)) / 1e6
        raw = best(lambda: fast.encode_ordinary_batch(docs, num_threads=1))
        ours = best(lambda: tok.encode_batch(docs, num_threads=1))
        check = best(lambda: [fast_path_ok(d) for d in docs])
        print(f"{name}: {chars:.2f} M chars | tiktoken {raw * 1e3:.1f} ms | Tokenizer.encode_batch {ours * 1e3:.1f} ms "
              f"| check alone {check * 1e3:.1f} ms ({check / raw:.1%} of tiktoken)")


if __name__ == "__main__":
    main()
