"""Byte-level BPE encoding and decoding: ``Tokenizer``.

    tok = Tokenizer.from_files("gpt2_vocab.json", "gpt2_merges.txt", special_tokens=["<|endoftext|>"])
    ids = tok.encode("Hello world<|endoftext|>")       # specials recognized, longest first
    text = tok.decode(ids)                             # invalid UTF-8 -> U+FFFD
    for i in tok.encode_iterable(open("big.txt")): ... # lazy; memory does not grow with input

Encoding: split on special tokens, cut into GPT-2 pre-tokens, and inside each pre-token
apply the merges by rank (lowest first), as GPT-2 and tiktoken do. Bulk encoding
(``encode_ordinary``, ``encode_batch``) goes through ``tiktoken`` built from our own merges
when it is installed and the vocab allows it (``fast_path``); ``encode_python`` is the
reference the fast path is tested against. Text with lone surrogates is encoded as
tiktoken does: surrogate pairs joined, lone ones replaced by U+FFFD. Text holding characters
newer than Python's Unicode database (``newer_unicode``) is encoded in Python, since
tiktoken's regex engine classifies them by other Unicode tables.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import regex

from lm.tokenizer.formats import (
    CONFIG_FILE,
    MERGES_FILE,
    VOCAB_FILE,
    read_config,
    read_merges,
    read_vocab,
    write_config,
    write_merges,
    write_vocab,
)
from lm.tokenizer.gpt2 import EOT, GPT2_PATTERN
from lm.tokenizer.pretokenize import special_split_pattern

_PRETOKEN_RE = regex.compile(GPT2_PATTERN)
# The last non-whitespace character followed by a space or newline: no GPT-2 pre-token
# spans that point and the regex never looks behind, so text can be cut there exactly.
_BOUNDARY_RE = regex.compile(r"(?r)\S(?=[ \n])")
_STREAM_BLOCK = 1 << 16  # characters encode_iterable gathers before encoding a block


_newer_unicode = None  # bool table over code points 0..0x3FFFF, built on first use


def newer_unicode():
    """Characters the two regex engines may see differently, as a numpy bool table indexed by
    code point: unassigned in Python's Unicode database but letters, digits or spaces to the
    ``regex`` module (which ships a newer Unicode). tiktoken's engine has its own tables (it
    splits e.g. "a\U0003d000" in two where ``regex`` keeps one pre-token), so text holding one
    of them is encoded in Python."""
    global _newer_unicode
    if _newer_unicode is None:
        import unicodedata

        # Planes 0-3 only: Unicode assigns no letters, digits or spaces beyond them (planes
        # 4-13 are empty, 14 holds format characters, 15-16 private use).
        unassigned = "".join(chr(c) for c in range(0x40000) if unicodedata.category(chr(c)) == "Cn")
        table = np.zeros(0x40000, dtype=bool)
        table[[ord(m.group()) for m in regex.finditer(r"[\p{L}\p{N}\s]", unassigned)]] = True
        _newer_unicode = table
    return _newer_unicode


def fast_path_ok(text: str) -> bool:
    """True when tiktoken pre-tokenizes ``text`` exactly as ``_PRETOKEN_RE`` does."""
    if text.isascii():
        return True
    # one table lookup per code point, vectorised: ~2 ns a character
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return not newer_unicode()[np.minimum(cps, 0x3FFFF)].any()


def _is_token_id(i, vocab: dict) -> bool:
    try:
        return operator.index(i) in vocab
    except TypeError:
        return False


def sanitize(text: str) -> str:
    """Join surrogate pairs and replace lone surrogates with U+FFFD (what tiktoken does)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    """A byte-level BPE tokenizer from a vocab (id -> bytes), merges in order and special tokens."""

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Sequence[str] | None = None,
        *,
        use_fast: bool = True,
    ):
        """``use_fast=False`` keeps every call on the pure-Python encoder (for tests and checks)."""
        self.vocab: dict[int, bytes] = dict(vocab)
        self.merges: list[tuple[bytes, bytes]] = [(bytes(a), bytes(b)) for a, b in merges]
        self.special_tokens: list[str] = list(dict.fromkeys(special_tokens or []))
        self.encoder: dict[bytes, int] = {}
        for i in sorted(self.vocab):  # a duplicated token encodes to its lowest id
            self.encoder.setdefault(self.vocab[i], i)
        for s in self.special_tokens:
            b = s.encode("utf-8")
            if b not in self.encoder:
                new_id = max(self.vocab, default=-1) + 1
                warnings.warn(f"special token {s!r} is not in the vocab; appending it with id {new_id}", stacklevel=2)
                self.vocab[new_id] = b
                self.encoder[b] = new_id
        self.special_ids: dict[str, int] = {s: self.encoder[s.encode("utf-8")] for s in self.special_tokens}
        missing = [b for b in range(256) if bytes([b]) not in self.encoder]
        if missing:
            raise ValueError(
                "vocab lacks single-byte tokens for bytes "
                f"{missing[:10]}{'…' if len(missing) > 10 else ''}: a byte-level BPE vocab needs all 256"
            )
        self.byte_ids: list[int] = [self.encoder[bytes([b])] for b in range(256)]
        # (left id, right id) -> (rank, merged id)
        self.ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            for part in (a, b, a + b):
                if part not in self.encoder:
                    raise ValueError(f"merge {rank} ({a!r}, {b!r}): token {part!r} is not in the vocab")
            self.ranks.setdefault((self.encoder[a], self.encoder[b]), (rank, self.encoder[a + b]))
        self._split_re = special_split_pattern(self.special_tokens)
        self._spaced_specials = [s for s in self.special_tokens if regex.search(r"\s", s)]
        self._cache: dict[str, tuple[int, ...]] = {}  # pre-token -> ids (pure-Python path)
        self.cache_size = 1 << 16  # entries; the cache is cleared when full, bounding memory
        self._fast = None
        self.fast_path_reason = "" if use_fast else "disabled (use_fast=False)"  # why the fast path is off
        self._fast_checked = not use_fast

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def eot_id(self) -> int | None:
        """Id of ``<|endoftext|>`` if the vocab has it (as a special or a plain token)."""
        return self.special_ids.get(EOT, self.encoder.get(EOT.encode()))

    # ------------------------------------------------------------------ pure Python
    def _bpe(self, piece: str) -> tuple[int, ...]:
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        parts = [self.byte_ids[b] for b in piece.encode("utf-8")]
        ranks = self.ranks
        while len(parts) > 1:
            best = None
            for pair in zip(parts, parts[1:]):
                r = ranks.get(pair)
                if r is not None and (best is None or r[0] < best[0]):
                    best, best_pair = r, pair
            if best is None:
                break
            a, b = best_pair
            merged, out, i, n = best[1], [], 0, len(parts)
            while i < n:
                if i + 1 < n and parts[i] == a and parts[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            parts = out
        ids = tuple(parts)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def _encode_ordinary_python(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in _PRETOKEN_RE.findall(text):
            out.extend(self._bpe(piece))
        return out

    def _split_specials(self, text: str) -> list[tuple[str, bool]]:
        """[(segment, is_special)], specials matched longest first."""
        if self._split_re is None:
            return [(text, False)]
        parts = self._split_re.split(text)
        return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]

    def encode_python(self, text: str) -> list[int]:
        """Encode with special tokens recognized, in pure Python (the reference encoder)."""
        text = sanitize(text)
        out: list[int] = []
        for seg, special in self._split_specials(text):
            if special:
                out.append(self.special_ids[seg])
            else:
                out.extend(self._encode_ordinary_python(seg))
        return out

    # ------------------------------------------------------------------ fast path (tiktoken)
    @property
    def fast_path(self):
        """A ``tiktoken.Encoding`` with our merges, or None (see ``fast_path_reason``)."""
        if not self._fast_checked:
            self._fast_checked = True
            self._fast = self._build_fast()
        return self._fast

    def _build_fast(self):
        try:
            import tiktoken
        except ImportError:
            self.fast_path_reason = "tiktoken is not installed"
            return None
        # tiktoken merges by the rank of the merged token's bytes and uses ranks as ids; we
        # merge by the rank of the pair. They agree when every multi-byte token is a merge
        # result and merged ids grow with merge order (train_bpe and GPT-2 vocabs), except in
        # contrived cases (a token reachable by two different splits): tests compare the two
        # on megabytes of real text, and encode_python stays the reference.
        special_bytes = {s.encode() for s in self.special_tokens}
        ranks = {t: i for t, i in self.encoder.items() if t not in special_bytes}
        if len(self.encoder) != len(self.vocab):
            self.fast_path_reason = "the vocab has duplicate tokens"
            return None
        merged_ids = [self.encoder[a + b] for a, b in self.merges]
        if any(x >= y for x, y in zip(merged_ids, merged_ids[1:])):
            self.fast_path_reason = "merged token ids do not grow with merge order"
            return None
        produced = {a + b for a, b in self.merges}
        if any(len(t) > 1 and t not in produced for t in ranks):
            self.fast_path_reason = "the vocab has multi-byte tokens that no merge produces"
            return None
        try:
            return tiktoken.Encoding(
                name="lmpipe-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=dict(self.special_ids)
            )
        except Exception as e:  # any refusal by tiktoken just disables the fast path
            self.fast_path_reason = f"tiktoken refused the vocab: {e}"
            return None

    # ------------------------------------------------------------------ public encoding
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode treating special-token text as ordinary text (what the tokenize stage does)."""
        text = sanitize(text)
        fast = self.fast_path
        return (
            fast.encode_ordinary(text)
            if fast is not None and fast_path_ok(text)
            else self._encode_ordinary_python(text)
        )

    def encode(self, text: str) -> list[int]:
        """Encode ``text``; special tokens in it become their ids (longest match first)."""
        fast = self.fast_path
        if fast is None:
            return self.encode_python(text)
        text = sanitize(text)
        out: list[int] = []
        # We split specials ourselves: tiktoken's special matching is not longest-first.
        for seg, special in self._split_specials(text):
            if special:
                out.append(self.special_ids[seg])
            else:
                out.extend(fast.encode_ordinary(seg) if fast_path_ok(seg) else self._encode_ordinary_python(seg))
        return out

    def encode_batch(self, texts: Sequence[str], num_threads: int = 4) -> list[list[int]]:
        """``encode_ordinary`` over many texts (tiktoken releases the GIL: threads help)."""
        fast = self.fast_path
        if fast is None:
            return [self.encode_ordinary(t) for t in texts]
        texts = [sanitize(t) for t in texts]
        ok = [fast_path_ok(t) for t in texts]
        out = fast.encode_ordinary_batch([t if k else "" for t, k in zip(texts, ok)], num_threads=num_threads)
        return [ids if k else self._encode_ordinary_python(t) for ids, t, k in zip(out, texts, ok)]

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily encode a stream of strings (e.g. a file's lines) as if concatenated.

        Text is held back only as far as needed for an exact result: up to the last point
        where no pre-token or special token can continue (a non-space character followed
        by a space or newline), so memory stays flat on ordinary text.
        """
        parts: list[str] = []
        held = 0
        for chunk in iterable:
            parts.append(chunk)
            held += len(chunk)
            if held < _STREAM_BLOCK:  # encode in blocks: per-call overhead, not per line
                continue
            buf = "".join(parts)
            cut = self._safe_cut(buf)
            if cut > 0:
                yield from self.encode(buf[:cut])
                buf = buf[cut:]
            parts, held = [buf], len(buf)
        if parts:
            yield from self.encode("".join(parts))

    def _safe_cut(self, buf: str) -> int:
        """The last offset where ``buf`` can be cut without changing its encoding (0: none)."""
        end = len(buf)
        # Hold back a tail that could be the start of a special token (or of a longer one).
        for s in self.special_tokens:
            for k in range(min(len(s), len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    end = min(end, len(buf) - k)
                    break
        while end > 0:
            m = _BOUNDARY_RE.search(buf, 0, end)
            if m is None:
                return 0
            cut = m.end()
            # A special token holding whitespace could straddle the cut: cut before it.
            straddle = [
                j for s in self._spaced_specials if 0 <= (j := buf.find(s, max(0, cut - len(s) + 1))) < cut < j + len(s)
            ]
            if not straddle:
                return cut
            end = min(straddle)
        return 0

    # ------------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; byte sequences that are not UTF-8 become U+FFFD."""
        vocab = self.vocab
        ids = ids if isinstance(ids, (list, tuple)) else list(ids)
        try:
            # operator.index: ints and numpy integers only (a float 3.0 would hash like 3)
            data = b"".join([vocab[operator.index(i)] for i in ids])
        except (KeyError, TypeError):
            bad = next(i for i in ids if not _is_token_id(i, vocab))
            raise ValueError(f"token id {bad!r} is not in the vocab (ids are integers 0..{max(vocab)})") from None
        return data.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ files
    @classmethod
    def from_files(
        cls,
        vocab_path: str | os.PathLike,
        merges_path: str | os.PathLike,
        special_tokens: Sequence[str] | None = None,
        *,
        use_fast: bool = True,
    ) -> Tokenizer:
        """Read GPT-2's vocab.json/merges.txt or our saved files."""
        specials = list(special_tokens or [])
        return cls(read_vocab(vocab_path, specials), read_merges(merges_path, specials), specials, use_fast=use_fast)

    def save(self, directory: str | os.PathLike, **config_extra) -> Path:
        """Write ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        write_vocab(d / VOCAB_FILE, self.vocab, self.special_tokens)
        write_merges(d / MERGES_FILE, self.merges)
        write_config(
            d / CONFIG_FILE, self.special_tokens, vocab_size=self.vocab_size, eot_id=self.eot_id, **config_extra
        )
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, *, use_fast: bool = True) -> Tokenizer:
        """Load a tokenizer directory written by ``save`` (or the tokenizer stage)."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(
                f"tokenizer directory {d} does not exist (write one with Tokenizer.save or the tokenizer flow)"
            )
        verify_tokenizer_files(d)
        specials = read_config(d / CONFIG_FILE).get("special_tokens", [])
        return cls.from_files(d / VOCAB_FILE, d / MERGES_FILE, specials, use_fast=use_fast)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special_tokens={self.special_tokens})"
        )


def verify_tokenizer_files(directory: str | os.PathLike) -> None:
    """A tokenizer stage's directory records its files' sha256 in ``_manifest.json``: check
    them, so a corrupted vocab or merges file fails loudly instead of tokenizing differently."""
    from lm.data.shards import MANIFEST_NAME, ShardCorruptError, file_sha256, read_manifest

    d = Path(directory)
    if not (d / MANIFEST_NAME).exists():
        return  # a tokenizer saved by hand (Tokenizer.save): nothing recorded to check against
    for name, digest in (read_manifest(d / MANIFEST_NAME).extra.get("files_sha256") or {}).items():
        path = d / name
        if not path.is_file() or file_sha256(path) != digest:
            raise ShardCorruptError(
                f"tokenizer file {path} is missing or does not match the sha256 in {d / MANIFEST_NAME} (corrupted "
                "or changed after training); rerun the tokenizer stage: it retrains and rewrites the files"
            )
