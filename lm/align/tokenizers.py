"""Load the tokenizer a checkpoint was trained with, whatever kind it is.

    "bytes" (or empty)            lm.model.generate.ByteTokenizer: bytes 0..255 + end-of-text 256
                                  (what byte-tokenized pretraining records)
    <dir>/char_tokenizer.json     CharTokenizer: one id per character (the demo's arithmetic task)
    <dir>/tokenizer.json          a Hugging Face tokenizer (optional ``hf`` extra)
    anything else                 our BPE tokenizer, ``lm.tokenizer.Tokenizer.load(dir)``

Every tokenizer used by lm.align has ``encode(str) -> list[int]``, ``decode(ids) -> str``
and ``eot_id`` (the stop/padding token).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

CHAR_FILE = "char_tokenizer.json"
EOT = "<|endoftext|>"


class CharTokenizer:
    """One token per character of a fixed alphabet, plus an end-of-text token (id 0).

    Unknown characters raise ValueError naming them: a silent <unk> would let a task's
    verifier see text the model never could have produced.
    """

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet {alphabet!r} repeats characters")
        self.alphabet = alphabet
        self.eot_id = 0
        self._ids = {c: i + 1 for i, c in enumerate(alphabet)}
        self.vocab_size = len(alphabet) + 1

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tokenizer alphabet {self.alphabet!r}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(EOT if i == 0 else self.alphabet[i - 1] for i in ids)

    def save(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CHAR_FILE).write_text(json.dumps({"kind": "char", "alphabet": self.alphabet, "eot": EOT}))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CharTokenizer:
        return cls(json.loads((Path(directory) / CHAR_FILE).read_text())["alphabet"])


def _is_lmpipe_bpe(d: Path) -> bool:
    try:
        return json.loads((d / "tokenizer_config.json").read_text()).get("format") == "lmpipe-bpe"
    except (OSError, ValueError, AttributeError):
        return False


def load_tokenizer(directory: str | os.PathLike | None):
    """The tokenizer saved in ``directory`` (see the module docstring for the kinds)."""
    if directory in (None, "", "bytes"):
        from lm.model.generate import ByteTokenizer

        return ByteTokenizer()
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"tokenizer directory {d} does not exist")
    if (d / CHAR_FILE).exists():
        return CharTokenizer.load(d)
    # lm.tokenizer also exports tokenizer.json for HF users; its own tokenizer_config.json
    # says "format": "lmpipe-bpe", and then the directory is ours, whatever else it holds.
    if not _is_lmpipe_bpe(d) and (d / "tokenizer.json").exists() and (d / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer  # optional hf extra

        from lm.align.batches import HFTokenizerAdapter

        return HFTokenizerAdapter(AutoTokenizer.from_pretrained(str(d)))
    try:
        from lm.tokenizer import Tokenizer
    except ImportError as e:
        raise FileNotFoundError(
            f"{d} holds no char or HF tokenizer, and lm.tokenizer.Tokenizer is unavailable ({e})"
        ) from e
    return Tokenizer.load(d)
