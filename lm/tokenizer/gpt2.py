"""GPT-2's byte-level conventions: the pre-tokenization regex and the bytes↔unicode table.

GPT-2 stores tokens in ``vocab.json``/``merges.txt`` as printable strings: every byte is
mapped to one visible unicode character (printable Latin-1 bytes map to themselves, the
rest to U+0100 onward). ``bytes_to_unicode`` rebuilds that table; ``encode_token`` /
``decode_token`` convert between token bytes and their file spelling.
"""

from __future__ import annotations

from functools import lru_cache

# The GPT-2 pre-tokenizer: contractions, letters, numbers, punctuation runs, whitespace.
# `\s+(?!\S)` leaves the last space of a run to prefix the next word.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """byte value -> the printable character GPT-2 uses for it in its files."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def encode_token(token: bytes) -> str:
    """Token bytes -> GPT-2 file spelling (no spaces, all printable)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def decode_token(text: str) -> bytes:
    """GPT-2 file spelling -> token bytes. Raises KeyError on a character outside the table."""
    table = unicode_to_bytes()
    return bytes(table[c] for c in text)
