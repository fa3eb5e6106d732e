"""Reading and writing vocab/merges files: GPT-2's format and ours.

GPT-2 format (``gpt2_vocab.json``, ``gpt2_merges.txt``): the vocab is ``{token: id}``, the
merges one ``left right`` pair per line (an optional ``#version`` first line), tokens
spelled with GPT-2's bytes→unicode table (``lm.tokenizer.gpt2``).

Our format (a tokenizer directory): ``vocab.json`` is ``{id: token}`` (same spelling, ids
as strings, in id order), ``merges.txt`` the same lines with a ``#lmpipe-bpe`` header, and
``tokenizer_config.json`` the special tokens and pre-tokenization pattern. Special tokens
are spelled as their own text (they may hold characters outside the table).

Every error names the file and, where there is one, the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from lm.tokenizer.gpt2 import GPT2_PATTERN, decode_token, encode_token

MERGES_HEADER = "#lmpipe-bpe v1"
VOCAB_FILE, MERGES_FILE, CONFIG_FILE = "vocab.json", "merges.txt", "tokenizer_config.json"


def _check_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} file {path} does not exist (expected a {what} file from save() or GPT-2's format)"
        )
    return path


def _decode(spelling: str, specials: set[str], where: str) -> bytes:
    if spelling in specials:
        return spelling.encode("utf-8")
    try:
        return decode_token(spelling)
    except KeyError as e:
        raise ValueError(
            f"{where}: token {spelling!r} has character {e.args[0]!r} outside GPT-2's byte table; "
            "tokens must be spelled with bytes_to_unicode (or be listed as special tokens)"
        ) from None


def read_vocab(path: str | os.PathLike, special_tokens: Sequence[str] = ()) -> dict[int, bytes]:
    """Read a vocab file in GPT-2 format ({token: id}) or ours ({id: token})."""
    path = _check_file(path, "vocab")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: vocab file is not UTF-8 ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: vocab file is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f"{path}: vocab must be a non-empty JSON object ({{token: id}} or {{id: token}}), got {type(raw).__name__}"
        )
    specials = set(special_tokens)
    vocab: dict[int, bytes] = {}
    ours = all(isinstance(v, str) for v in raw.values())
    for key, value in raw.items():
        token, tid = (value, key) if ours else (key, value)
        if ours:
            try:
                tid = int(tid)
            except ValueError:
                raise ValueError(
                    f"{path}: vocab key {key!r} is not an integer id (our format maps id -> token)"
                ) from None
        elif not isinstance(tid, int) or isinstance(tid, bool):
            raise ValueError(f"{path}: vocab entry {key!r}: {value!r} must map a token to an integer id")
        if tid < 0:
            raise ValueError(f"{path}: vocab entry {key!r} has a negative id {tid}")
        if tid in vocab:
            raise ValueError(f"{path}: id {tid} appears twice in the vocab")
        vocab[tid] = _decode(token, specials, f"{path} (entry {key!r})")
    return vocab


def read_merges(path: str | os.PathLike, special_tokens: Sequence[str] = ()) -> list[tuple[bytes, bytes]]:
    """Read merges, one ``left right`` pair a line; errors name the file and line number."""
    path = _check_file(path, "merges")
    specials = set(special_tokens)
    merges = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}:{lineno}: merges file is not UTF-8 ({err.reason} at byte {err.start})"
                ) from None
            if lineno == 1 and line.startswith(("#version", "#lmpipe-bpe")):
                continue
            if not line:
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise ValueError(f"{path}:{lineno}: expected two tokens separated by one space, got {line!r}")
            where = f"{path}:{lineno}"
            merges.append((_decode(parts[0], specials, where), _decode(parts[1], specials, where)))
    return merges


def write_vocab(path: str | os.PathLike, vocab: dict[int, bytes], special_tokens: Sequence[str] = ()) -> None:
    specials = {s.encode("utf-8") for s in special_tokens}
    body = {str(i): (t.decode("utf-8") if t in specials else encode_token(t)) for i, t in sorted(vocab.items())}
    Path(path).write_text(json.dumps(body, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def write_merges(path: str | os.PathLike, merges: Sequence[tuple[bytes, bytes]]) -> None:
    lines = [MERGES_HEADER] + [f"{encode_token(a)} {encode_token(b)}" for a, b in merges]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_config(path: str | os.PathLike, special_tokens: Sequence[str], **extra) -> None:
    body = {
        "format": "lmpipe-bpe",
        "version": 1,
        "pattern": GPT2_PATTERN,
        "special_tokens": list(special_tokens),
        **extra,
    }
    Path(path).write_text(json.dumps(body, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_config(path: str | os.PathLike) -> dict:
    path = _check_file(path, "tokenizer config")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: tokenizer config is not valid JSON ({e.msg})") from None
    if cfg.get("pattern", GPT2_PATTERN) != GPT2_PATTERN:
        raise ValueError(
            f"{path}: pre-tokenization pattern {cfg['pattern']!r} is not GPT-2's; only GPT-2's is supported"
        )
    if not isinstance(cfg.get("special_tokens", []), list):
        raise ValueError(f"{path}: special_tokens must be a list of strings")
    return cfg
