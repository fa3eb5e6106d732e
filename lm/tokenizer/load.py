"""Every tokenizer lmpipe trains or runs with, loaded by one function, :func:`load_tokenizer`.

    "bytes" (or empty)            ByteTokenizer: bytes 0..255 + end-of-text 256
                                  (what byte-tokenized pretraining records)
    <dir>/char_tokenizer.json     CharTokenizer: one id per character (the demo's arithmetic task)
    <dir>/tokenizer.json          a Hugging Face tokenizer (optional ``hf`` extra), via HFTokenizerAdapter
    anything else                 our BPE tokenizer, ``lm.tokenizer.Tokenizer.load(dir)``; a remote
                                  directory (s3://…) is read through the local cache

Every one has ``encode(str) -> list[int]``, ``decode(ids) -> str`` and ``eot_id`` (the
stop/padding token).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from lm.tokenizer.stages import local_tokenizer_dir
from lm.tokenizer.tokenizer import Tokenizer
from lm.train.data import byte_tokens

CHAR_FILE = "char_tokenizer.json"
EOT = "<|endoftext|>"


class ByteTokenizer:
    """The 257-id byte-level vocabulary of byte-tokenized demos: bytes 0..255 and end-of-text 256."""

    eot_id = 256
    special = "<|endoftext|>"

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in byte_tokens(text, self.special, self.eot_id)]

    def decode(self, ids: list[int]) -> str:
        parts, buf = [], bytearray()
        for i in ids:
            if i == self.eot_id:
                parts.append(buf.decode("utf-8", errors="replace") + self.special)
                buf = bytearray()
            else:
                buf.append(i)
        return "".join(parts) + buf.decode("utf-8", errors="replace")


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


class HFTokenizerAdapter:
    """Gives a Hugging Face tokenizer our ``encode``/``decode``/``eot_id`` surface (no special tokens added)."""

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        eos = hf_tokenizer.eos_token_id
        pad = hf_tokenizer.pad_token_id
        self.eot_id = eos if eos is not None else pad
        self.pad_id = pad if pad is not None else eos

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)


def _is_lmpipe_bpe(d: Path) -> bool:
    try:
        return json.loads((d / "tokenizer_config.json").read_text()).get("format") == "lmpipe-bpe"
    except (OSError, ValueError, AttributeError):
        return False


def load_tokenizer(directory: str | os.PathLike | None):
    """The tokenizer saved in ``directory`` (see the module docstring for the kinds)."""
    if directory in (None, "", "bytes"):
        return ByteTokenizer()
    d = local_tokenizer_dir(directory)  # a remote directory: a verified local copy
    if not d.is_dir():
        raise FileNotFoundError(f"tokenizer directory {d} does not exist")
    if (d / CHAR_FILE).exists():
        return CharTokenizer.load(d)
    # lm.tokenizer also exports tokenizer.json for HF users; its own tokenizer_config.json
    # says "format": "lmpipe-bpe", and then the directory is ours, whatever else it holds.
    if not _is_lmpipe_bpe(d) and (d / "tokenizer.json").exists() and (d / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer  # optional hf extra

        return HFTokenizerAdapter(AutoTokenizer.from_pretrained(str(d)))
    return Tokenizer.load(d)
