"""Exports of a ``Tokenizer`` to other libraries' formats.

- ``export_hf_tokenizer_json``: a Hugging Face ``tokenizer.json`` (BPE model, GPT-2 regex
  split + byte-level pre-tokenizer, byte-level decoder, specials as added tokens) that
  ``tokenizers.Tokenizer.from_file`` loads and that encodes to our ids.
- ``export_tiktoken_ranks``: a ``.tiktoken`` ranks file (``base64(token) rank`` per line,
  as ``tiktoken.load.load_tiktoken_bpe`` reads), and ``tiktoken_encoding`` to build a
  ``tiktoken.Encoding`` from such a file without any download.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from lm.tokenizer.gpt2 import GPT2_PATTERN, encode_token
from lm.tokenizer.tokenizer import Tokenizer


def hf_tokenizer_dict(tok: Tokenizer) -> dict:
    """The ``tokenizer.json`` body for ``tok``."""
    special = {s.encode("utf-8"): s for s in tok.special_tokens}
    vocab: dict[str, int] = {}
    for i, t in sorted(tok.vocab.items()):
        name = special.get(t) or encode_token(t)
        if name in vocab:
            raise ValueError(
                f"token {t!r} has two ids ({vocab[name]} and {i}); a tokenizer.json vocab needs unique tokens"
            )
        vocab[name] = i
    added = [
        {
            "id": tok.special_ids[s],
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for s in tok.special_tokens
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[encode_token(a), encode_token(b)] for a, b in tok.merges],
        },
    }


def export_hf_tokenizer_json(tok: Tokenizer, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.write_text(json.dumps(hf_tokenizer_dict(tok), ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def export_tiktoken_ranks(tok: Tokenizer, path: str | os.PathLike) -> Path:
    """Write the non-special tokens as ``base64(bytes) id`` lines, in id order."""
    special = {s.encode("utf-8") for s in tok.special_tokens}
    lines = [f"{base64.b64encode(t).decode()} {i}" for i, t in sorted(tok.vocab.items()) if t not in special]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def load_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a ``.tiktoken`` ranks file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiktoken ranks file {path} does not exist")
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split(" ")
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected 'base64-token rank', got {line[:80]!r}") from None
    return ranks


def tiktoken_encoding(
    ranks_path: str | os.PathLike, special_tokens: dict[str, int] | None = None, name: str = "lmpipe"
):
    """A ``tiktoken.Encoding`` from a local ranks file (GPT-2 regex), no download."""
    import tiktoken

    return tiktoken.Encoding(
        name=name,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=load_tiktoken_ranks(ranks_path),
        special_tokens=special_tokens or {},
    )
