"""A byte stream over a plain or multi-member gzip file that knows where each member starts.

Common Crawl writes one gzip member per WARC record, so the compressed offset of the member
a record starts in is the address of that record (what the CC index stores). ``MemberStream``
decompresses member after member in fixed-size chunks (memory stays bounded whatever the file
size), offers ``readline``/``read``/``skip`` on the decompressed bytes, maps a decompressed
position back to its member's offset, and reports how the input ended: cleanly, inside a
member (``truncated_gzip``) or on invalid data (``corrupt_gzip``).

``decode_body`` undoes an HTTP ``Content-Encoding`` (gzip, deflate, br) and ``gunzip_capped`` a
gzip file held in memory, each producing at most a given number of bytes whatever the input
claims: a few hundred bytes of compression bomb must not become gigabytes in memory.
"""

from __future__ import annotations

import bisect
import zlib
from typing import BinaryIO

GZIP_MAGIC = b"\x1f\x8b"
MAX_DECODED = 64 << 20  # cap on a Content-Encoding-decoded body (a compression bomb stops here)
CHUNK_SIZE = 1 << 16
MAX_LINE = 1 << 16  # a longer "header line" means we are reading binary garbage


class MemberStream:
    """The decompressed bytes of a plain or multi-member gzip file, read in chunks.

    Remembers where each gzip member starts (compressed offset) so a record found at a given
    decompressed position can be located in the file. ``base`` is the file offset the raw stream
    starts at (non-zero when reading a slice or a Range).
    """

    def __init__(self, raw: BinaryIO, base: int = 0, chunk_size: int = CHUNK_SIZE):
        self.raw = raw
        self.base = base
        self.chunk_size = chunk_size
        self.buf = bytearray()
        self.pos = 0  # read position in buf
        self.buf_abs = 0  # absolute decompressed position of buf[0]
        self.raw_read = 0  # raw bytes consumed
        self.gzip: bool | None = None  # unknown until the first bytes arrive
        self.members: list[tuple[int, int]] = []  # (decompressed start, compressed offset)
        self._d = None
        self._d_fed = False  # the current member has received input
        self.eof = False
        self.error: str | None = None  # truncated_gzip | corrupt_gzip
        self.error_detail = ""
        # Decompressed position where the bytes of the member that broke begin: zlib checks a
        # member's CRC only at its end, so what it already gave us of that member is unverified.
        self.unverified_from: int | None = None

    # -- filling
    def _new_member(self, comp_offset: int) -> None:
        self._d = zlib.decompressobj(31)
        self._d_fed = False
        self.members.append((self.buf_abs + len(self.buf), comp_offset))

    def _fill(self) -> bool:
        """Append more decompressed bytes to buf. False at end of input."""
        if self.eof:
            return False
        if self.pos > (1 << 20) and self.pos > len(self.buf) // 2:
            del self.buf[: self.pos]
            self.buf_abs += self.pos
            self.pos = 0
        chunk = self.raw.read(self.chunk_size)
        start = self.raw_read
        self.raw_read += len(chunk)
        if self.gzip is None:
            while 0 < len(chunk) < 2 and (more := self.raw.read(self.chunk_size)):
                chunk += more  # need two bytes to see the gzip magic
                self.raw_read += len(more)
            if not chunk:
                self.eof = True
                return False
            self.gzip = chunk[:2] == GZIP_MAGIC
            if self.gzip:
                self._new_member(self.base)
            else:
                self.members.append((0, self.base))
        if not chunk:
            self.eof = True
            if self.gzip and self._d is not None and self._d_fed:
                self.error, self.error_detail = "truncated_gzip", "gzip stream ends inside a member"
                self.unverified_from = self.members[-1][0]
                self.buf += self._d.flush()
            return False
        if not self.gzip:
            self.buf += chunk
            return True
        data = chunk
        while data:
            if self._d is None:
                if data.strip(b"\x00\r\n\t ") == b"":  # padding after the last member
                    break
                if not data.startswith(GZIP_MAGIC[: len(data)]):
                    self.error, self.error_detail = "corrupt_gzip", "data after a gzip member is not gzip"
                    self.unverified_from = self.buf_abs + len(self.buf)
                    self.eof = True
                    return bool(data)
                self._new_member(self.base + start + (len(chunk) - len(data)))
            try:
                self.buf += self._d.decompress(data)
            except zlib.error as e:
                self.error, self.error_detail = "corrupt_gzip", str(e)
                self.unverified_from = self.members[-1][0]
                self.eof = True
                return True
            self._d_fed = True
            if self._d.eof:
                data = self._d.unused_data
                self._d = None
            else:
                data = b""
        return True

    # -- reading
    def readline(self, limit: int = MAX_LINE) -> bytes:
        while True:
            i = self.buf.find(b"\n", self.pos, self.pos + limit)
            if i >= 0:
                line = bytes(self.buf[self.pos : i + 1])
                self.pos = i + 1
                return line
            if len(self.buf) - self.pos >= limit or not self._fill():
                n = min(limit, len(self.buf) - self.pos)
                line = bytes(self.buf[self.pos : self.pos + n])
                self.pos += n
                return line

    def skip(self, n: int) -> int:
        """Discard ``n`` bytes without holding them (huge blocks); returns how many were there."""
        left = n
        while left:
            have = len(self.buf) - self.pos
            if have == 0 and not self._fill():
                break
            take = min(left, len(self.buf) - self.pos)
            self.pos += take
            left -= take
        return n - left

    def read(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n and self._fill():
            pass
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += len(out)
        return out

    def tell(self) -> int:
        return self.buf_abs + self.pos

    def offset_of(self, abs_pos: int) -> int:
        """File offset of the record starting at decompressed position ``abs_pos``."""
        if not self.gzip:
            return self.base + abs_pos
        # Records come in file order: members wholly before this record are no longer needed.
        k = bisect.bisect_right(self.members, (abs_pos, float("inf"))) - 1
        if k < 0:
            return self.base
        del self.members[:k]
        return self.members[0][1]


# --------------------------------------------------------------------------- bounded one-shot decoding


def decode_body(body: bytes, encoding: str, limit: int = MAX_DECODED) -> bytes:
    """Undo one HTTP Content-Encoding (``gzip``/``x-gzip``, ``deflate``, ``br``), keeping at most
    ``limit`` decoded bytes (a bigger body is cut there; the extract stage rejects it as over its
    size cap anyway). ValueError when the body is not valid data of that encoding; a body under
    an encoding we do not decode, or stored already decoded (ClueWeb keeps the header on decoded
    gzip bodies), is returned as it is."""
    enc = encoding.strip().lower()
    try:
        if enc in ("gzip", "x-gzip"):
            return zlib.decompressobj(31).decompress(body, limit) if body[:2] == GZIP_MAGIC else body
        if enc == "deflate" and body:
            try:
                return zlib.decompressobj().decompress(body, limit)
            except zlib.error:
                return zlib.decompressobj(-15).decompress(body, limit)  # raw deflate, as some servers send
    except zlib.error as e:
        raise ValueError(f"invalid {enc} data: {e}") from None
    if enc == "br" and body:
        return _brotli_capped(body, limit)
    return body


def _brotli_capped(body: bytes, limit: int) -> bytes:
    try:
        import brotli  # optional: only WARCs written without decoding need it
    except ImportError:
        raise ValueError("br-encoded body and the brotli package is not installed") from None
    try:
        out = brotli.Decompressor().process(body, output_buffer_limit=limit)
    except TypeError:  # brotli < 1.1 cannot bound its output: decoding would risk a bomb
        raise ValueError("br-encoded body: the installed brotli cannot cap its output (need brotli >= 1.1)") from None
    except brotli.error as e:
        raise ValueError(f"invalid br data: {e}") from None
    return out[:limit]


def gunzip_capped(data: bytes, limit: int, what: str) -> bytes:
    """``data`` decompressed when it is gzip (all members), refusing more than ``limit`` bytes."""
    if data[:2] != GZIP_MAGIC:
        if len(data) > limit:
            raise ValueError(f"{what} is {len(data):,} bytes, over the {limit:,}-byte limit; split it")
        return data
    out = bytearray()
    while data:
        d = zlib.decompressobj(31)
        try:
            out += d.decompress(data, limit + 1 - len(out))
        except zlib.error as e:
            raise ValueError(f"{what} is not valid gzip ({e})") from None
        if len(out) > limit:
            raise ValueError(
                f"{what} decompresses to more than {limit:,} bytes; split it (or it is a compression bomb)"
            )
        if not d.eof:
            raise ValueError(f"{what} ends inside a gzip member (truncated)")
        data = d.unused_data.lstrip(b"\x00")
    return bytes(out)
