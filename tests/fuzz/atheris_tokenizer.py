"""atheris (libFuzzer) harness for the BPE tokenizer: round trips, fast path = Python path, decoding ids.

    PYTHONPATH=. LMPIPE_REFERENCE=../shared/reference \
        python tests/fuzz/atheris_tokenizer.py -max_total_time=60 -timeout=20

Uses the GPT-2 vocab and merges of the CS336 fixtures (``$LMPIPE_REFERENCE``). Per input:
``decode(encode(s)) == s`` for the surrogate-free string the input spells, the tiktoken path and
the pure-Python path give the same ids, and the input's bytes read as token ids either
decode (U+FFFD for invalid UTF-8) or raise ValueError naming an id outside the vocab.
"""

import os
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["lm"]):
    from lm.tokenizer import Tokenizer
    from lm.tokenizer.gpt2 import EOT

_FX = (
    Path(os.environ.get("LMPIPE_REFERENCE", Path(__file__).resolve().parents[3] / "shared" / "reference"))
    / "assignment1-basics"
    / "fixtures"
)
FAST = Tokenizer.from_files(_FX / "gpt2_vocab.json", _FX / "gpt2_merges.txt", [EOT])
SLOW = Tokenizer(FAST.vocab, FAST.merges, FAST.special_tokens, use_fast=False)
assert FAST.fast_path is not None, FAST.fast_path_reason


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))
    if fdp.ConsumeBool():
        text += EOT + text
    ids = SLOW.encode(text)
    assert FAST.encode(text) == ids, text
    assert FAST.decode(ids) == text
    raw = [fdp.ConsumeIntInRange(-2, len(FAST.vocab) + 1) for _ in range(fdp.ConsumeIntInRange(0, 20))]
    try:
        out = FAST.decode(raw)
    except ValueError as e:
        assert any(i < 0 or i >= len(FAST.vocab) for i in raw) and "not in the vocab" in str(e)
    else:
        assert all(0 <= i < len(FAST.vocab) for i in raw)
        assert out == b"".join(FAST.vocab[i] for i in raw).decode("utf-8", "replace")


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
