"""Read web archives: WARC (0.18-1.1), WET, WAT and ARC, gzip or plain, local or remote.

``iter_records(source)`` yields one :class:`Record` per archive record. ``source`` is a local
path or glob, an http(s) URL, a Common Crawl listing (``cc://CC-MAIN-2024-22?kind=wet&files=2``
or :class:`~lm.data.remote.CCListing`), or a list of ``(file, offset, length)`` pointers as the
Common Crawl index returns them (one HTTP Range request, or one seek, per record).

Gzip files are read member by member (Common Crawl writes one gzip member per record), so each
record's ``source`` is ``"<file>:<offset>"`` with the *compressed* offset of the member where it
starts: exactly the offset the CC index gives, usable to fetch the record again with one Range
request. For plain files it is the byte offset of the record.

Nothing is dropped silently. A record that cannot be read completely is still yielded, with
``error`` set to its kind, so a stage can count it as failed:

- ``truncated_gzip``: the gzip stream ends in the middle of a member (a clipped download);
- ``truncated_record``: a plain file ends before the record's Content-Length;
- ``corrupt_gzip``: the compressed data is invalid (also set on a record read from a member
  whose CRC then fails: zlib checks it only at the member's end);
- ``not_warc``: the input does not start with a WARC/ARC record (the only record of that input);
- ``bad_header``: a header block we cannot delimit (missing or invalid Content-Length, or a
  ``WARC/`` line before its blank line); the reader skips to the next ``WARC/`` line and goes on;
- ``bad_content_length``: the block does not end where Content-Length says (what follows is
  not a record start at the beginning of a line); the record is yielded flagged and the reader
  resynchronises.

Blocks longer than ``max_block_bytes`` (if given) are skipped without being held in memory:
the record comes with an empty payload and ``oversized=True``.

Format quirks handled on purpose: ClueWeb09 (``WARC/0.18``, HTTP headers ending in bare LF, a
``Content-Encoding: gzip`` header on bodies stored decoded), records whose size is a multiple of
the read block size, chunked HTTP bodies, gzip/deflate/brotli HTTP content encodings.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lm.data import remote
from lm.data.gzstream import CHUNK_SIZE, GZIP_MAGIC, MAX_DECODED, MAX_LINE, MemberStream, decode_body


def record_id(location: str, offset: int, member_pos: int = 0) -> str:
    """Stable document id: 16 hex chars of sha256 of where the record is: its file (path or
    URL), the file offset of its record (or gzip member) and, when several records share one
    gzip member, its position inside that member. Unique within a stage even when archives
    share WARC-Record-IDs (the WARC-Record-ID stays in ``Record.headers``)."""
    key = f"{location}:{offset}" + (f"+{member_pos}" if member_pos else "")
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass
class Record:
    """One archive record. ``payload`` is the HTTP body for responses (de-chunked, decoded),
    else the record block. ``content_type`` is the payload's type: the HTTP Content-Type for
    responses, the WARC Content-Type otherwise."""

    id: str
    url: str
    source: str  # "<file>:<offset>"
    record_type: str  # response, request, metadata, warcinfo, conversion, resource, revisit, ...
    content_type: str
    date: str
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)  # WARC headers (or ARC fields)
    http_status: int | None = None
    http_headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # set when the record could not be read completely (see module doc)
    oversized: bool = False  # block over the reader's max_block_bytes: payload left empty
    error_detail: str = ""

    @property
    def mime(self) -> str:
        """The bare media type, lowercase: ``text/html`` for ``text/html; charset=UTF-8``."""
        return self.content_type.split(";", 1)[0].strip().lower()


class WarcFormatError(ValueError):
    """Raised by ``iter_records(..., errors="raise")`` for an unreadable record."""


# --------------------------------------------------------------------------- parsing


def _parse_header_lines(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = None
    for raw in lines:
        if raw[:1] in (b" ", b"\t") and last is not None:  # folded continuation line
            headers[last] += " " + raw.strip().decode("utf-8", "replace")
            continue
        name, sep, value = raw.partition(b":")
        if not sep:
            continue
        last = name.strip().decode("latin-1")
        headers.setdefault(last, value.strip().decode("utf-8", "replace"))
    return headers


def _get(headers: dict[str, str], name: str, default: str = "") -> str:
    """Case-insensitive header lookup (writers disagree on capitalisation)."""
    v = headers.get(name)
    if v is not None:
        return v
    low = name.lower()
    for k, v in headers.items():
        if k.lower() == low:
            return v
    return default


def _dechunk(body: bytes) -> bytes | None:
    """Decode a chunked HTTP body; None if it is not valid chunked encoding."""
    out, pos = bytearray(), 0
    while True:
        eol = body.find(b"\n", pos)
        if eol < 0:
            return None
        size_s = body[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_s, 16)
        except ValueError:
            return None
        pos = eol + 1
        if size == 0:
            return bytes(out)
        if pos + size > len(body):
            return None
        out += body[pos : pos + size]
        pos += size
        if body[pos : pos + 2] == b"\r\n":
            pos += 2
        elif body[pos : pos + 1] == b"\n":
            pos += 1


def _decode_content(body: bytes, encoding: str) -> bytes:
    """Undo an HTTP Content-Encoding when the body really is encoded (ClueWeb stores decoded
    bodies under ``Content-Encoding: gzip``; Common Crawl renames the header), to at most
    ``MAX_DECODED`` bytes whatever the encoding (``gzstream.decode_body``)."""
    try:
        return decode_body(body, encoding, MAX_DECODED)
    except ValueError:  # a body we cannot decode stays as stored; extraction judges it
        return body


def split_http(block: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """Split an HTTP response block into (status, headers, body), accepting CRLF or bare LF."""
    cands = [(i, n) for i, n in ((block.find(b"\r\n\r\n"), 4), (block.find(b"\n\n"), 2)) if i >= 0]
    if not cands:
        head, body = block, b""
    else:
        i, n = min(cands)
        head, body = block[:i], block[i + n :]
    lines = head.split(b"\n")
    status = None
    parts = lines[0].split(None, 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
        try:
            status = int(parts[1])
        except ValueError:
            status = None
    headers = _parse_header_lines([ln.rstrip(b"\r") for ln in lines[1:]])
    if "chunked" in _get(headers, "Transfer-Encoding").lower():
        body = _dechunk(body) or body
    ce = _get(headers, "Content-Encoding")
    if ce:
        body = _decode_content(body, ce)
    return status, headers, body


def _make_record(
    location: str, offset: int, headers: dict[str, str], block: bytes, *, arc: bool = False, member_pos: int = 0
) -> Record:
    if arc:
        rtype = headers.get("_type", "response")
        url, date, ctype = headers.get("url", ""), headers.get("archive-date", ""), headers.get("content-type", "")
    else:
        rtype = _get(headers, "WARC-Type", "unknown").lower()
        url, date, ctype = _get(headers, "WARC-Target-URI"), _get(headers, "WARC-Date"), _get(headers, "Content-Type")
    url = url.strip("<>")
    status, http_headers, payload = None, {}, block
    if (rtype in ("response", "revisit") and "application/http" in ctype.lower()) or (arc and block[:5] == b"HTTP/"):
        status, http_headers, payload = split_http(block)
        ctype = _get(http_headers, "Content-Type")
    return Record(
        id=record_id(location, offset, member_pos),
        url=url,
        source=f"{location}:{offset}",
        record_type=rtype,
        content_type=ctype,
        date=date,
        payload=payload,
        headers=headers,
        http_status=status,
        http_headers=http_headers,
    )


def _failure(
    location: str,
    offset: int,
    kind: str,
    detail: str,
    headers: dict | None = None,
    block: bytes = b"",
    member_pos: int = 0,
) -> Record:
    headers = headers or {}
    rec = (
        _make_record(location, offset, headers, block, member_pos=member_pos)
        if headers
        else Record(
            id=record_id(location, offset, member_pos),
            url="",
            source=f"{location}:{offset}",
            record_type="unknown",
            content_type="",
            date="",
            payload=block,
        )
    )
    rec.error, rec.error_detail = kind, detail
    return rec


def _arc_header(line: bytes) -> dict[str, str] | None:
    """An ARC v1/v2 record header line: ``URL IP date content-type [...] length``."""
    parts = line.split()
    if len(parts) < 5 or b"://" not in parts[0] and not parts[0].startswith(b"filedesc:"):
        return None
    try:
        length = int(parts[-1])
    except ValueError:
        return {"url": parts[0].decode("utf-8", "replace"), "length": "invalid"}
    return {
        "url": parts[0].decode("utf-8", "replace"),
        "ip": parts[1].decode("latin-1"),
        "archive-date": parts[2].decode("latin-1"),
        "content-type": parts[3].decode("latin-1"),
        "length": str(max(length, 0)),  # some writers use -1 for "no content"
        "_type": "warcinfo" if parts[0].startswith(b"filedesc:") else "response",
    }


def _read_warc_headers(stream: MemberStream) -> tuple[dict[str, str], bool, bytes]:
    """Header lines up to the blank line: (headers, complete, next_start). ``complete`` is False
    if the input ended first; ``next_start`` is a ``WARC/`` line met before the blank line (no
    header field starts so: the block never ended, and a new record starts there)."""
    lines = []
    while True:
        hl = stream.readline()
        if not hl:
            return _parse_header_lines(lines), False, b""
        if not hl.strip():
            return _parse_header_lines(lines), True, b""
        if hl.startswith(b"WARC/"):
            return _parse_header_lines(lines), False, hl
        if len(hl) >= MAX_LINE and not hl.endswith(b"\n"):
            # A line over the limit comes in pieces: keep its first piece and drop the rest, so
            # that a rest of just "\n" (after "\r") is not taken for the blank line.
            while (rest := stream.readline()) and not rest.endswith(b"\n"):
                pass
        lines.append(hl.rstrip(b"\r\n"))


def _is_start(line: bytes, arc: bool) -> bool:
    return line.startswith(b"WARC/") or (arc and _arc_header(line) is not None)


def _next_line(stream: MemberStream) -> bytes:
    """The next non-blank line (records are separated by blank lines)."""
    line = stream.readline()
    while line and not line.strip():
        line = stream.readline()
    return line


def _read_block(stream: MemberStream, length: int, max_block: int | None) -> tuple[bytes, int]:
    """The record block, or b"" when it is over ``max_block`` (skipped, never held in memory).
    Returns (block, bytes present in the input)."""
    if max_block is not None and length > max_block:
        return b"", stream.skip(length)
    block = stream.read(length)
    return block, len(block)


def parse_stream(
    stream: MemberStream,
    location: str,
    *,
    end: int | None = None,
    max_records: int | None = None,
    max_block_bytes: int | None = None,
) -> Iterator[Record]:
    """Yield the records of one decompressed stream; ``end``: stop at records starting at or
    after this file offset (slices); ``max_records``: stop after that many; ``max_block_bytes``:
    records with a bigger block come with an empty payload and ``oversized=True``."""
    n, arc, reported = 0, False, False
    line = _next_line(stream)
    first = True
    while True:
        if not line:
            if stream.error and not reported:  # the input broke between records: count what was lost as one record
                offset, pos = _where(stream, stream.tell())
                yield _failure(location, offset, stream.error, stream.error_detail, member_pos=pos)
            return
        offset, pos = _where(stream, stream.tell() - len(line))
        if (end is not None and offset >= end) or (max_records is not None and n >= max_records):
            return
        n += 1
        if line.startswith(b"WARC/"):
            headers, complete, next_start = _read_warc_headers(stream)
            if next_start:
                yield _failure(
                    location,
                    offset,
                    "bad_header",
                    "the header block runs into the next WARC/ line",
                    headers,
                    member_pos=pos,
                )
                line, first = next_start, False
                continue
            if not complete:
                yield _failure(
                    location,
                    offset,
                    stream.error or "truncated_record",
                    "input ends inside the WARC header",
                    headers,
                    member_pos=pos,
                )
                return
            try:
                length = int(_get(headers, "Content-Length"))
                if length < 0:
                    raise ValueError
            except ValueError:
                yield _failure(
                    location,
                    offset,
                    "bad_header",
                    f"Content-Length {_get(headers, 'Content-Length')!r}",
                    headers,
                    member_pos=pos,
                )
                line, first = _resync(stream, arc), False
                continue
            block, got = _read_block(stream, length, max_block_bytes)
            rec = _make_record(location, offset, headers, block, member_pos=pos)
        elif (arc or first) and (h := _arc_header(line)) is not None:
            arc = True
            if h["length"] == "invalid":
                yield _failure(location, offset, "bad_header", f"ARC header {line[:200]!r}", member_pos=pos)
                line, first = _resync(stream, arc), False
                continue
            length = int(h["length"])
            block, got = _read_block(stream, length, max_block_bytes)
            rec = _make_record(location, offset, h, block, arc=True, member_pos=pos)
        elif first:
            yield _failure(
                location,
                offset,
                stream.error or "not_warc",
                f"input starts with {line[:60]!r}, not a WARC/ARC record",
                member_pos=pos,
            )
            return
        else:  # unreachable: lines are only handed on when they start a record
            raise AssertionError(line[:60])
        first = False
        rec.oversized = got > len(block)
        if got < length:
            rec.error = stream.error or "truncated_record"
            rec.error_detail = f"{got} of {length} bytes before the input ends"
            yield rec
            return
        block_end = stream.tell()
        # Look ahead to the next record. It must start at the beginning of a line: after a
        # line break that ends the block (some writers count the separator in Content-Length)
        # or follows it. With one record per gzip member (Common Crawl) the lookahead also reads
        # past the record's member, so the member's CRC has been checked by now. (Records that
        # share a member with damage further on pass before it is seen; only a full read-ahead
        # could avoid that.)
        line = stream.readline()
        at_line_start = not line.strip() or length == 0 or block.endswith(b"\n") or rec.oversized
        if not line.strip():
            line = _next_line(stream)
        if line and not (at_line_start and _is_start(line, arc)):
            # The block did not end where Content-Length said: the record is damaged. Skip to
            # the next record start rather than reading the rest of the block as headers. (A
            # "start" in mid-line is not trusted: an ARC header is any line with a URL, and a
            # too-long block can end inside one.)
            rec.error, rec.error_detail = "bad_content_length", f"{line[:60]!r} follows the declared {length} bytes"
            line = _resync(stream, arc)
        if stream.unverified_from is not None and block_end > stream.unverified_from:
            # Part of the record came from a gzip member that then failed (bad CRC, invalid
            # deflate data, cut short): its bytes may be wrong, so the record is failed with
            # the stream's error, which it reports (no separate tail failure).
            rec.error, rec.error_detail = stream.error, f"read from a damaged gzip member: {stream.error_detail}"
            reported = True
        yield rec


def _where(stream: MemberStream, abs_pos: int) -> tuple[int, int]:
    """(file offset of the record or gzip member at decompressed position ``abs_pos``, position
    inside that member): the second is 0 for one record per member and for plain files, and
    tells apart the records of a file compressed as one gzip stream (one offset for all)."""
    offset = stream.offset_of(abs_pos)
    if not stream.gzip or not stream.members:
        return offset, 0
    return offset, max(0, abs_pos - stream.members[0][0])


def _resync(stream: MemberStream, arc: bool) -> bytes:
    """Skip to the next line that starts a record."""
    while True:
        line = stream.readline()
        if not line or _is_start(line, arc):
            return line


# --------------------------------------------------------------------------- sources


def iter_file(
    location: str,
    *,
    start: int = 0,
    end: int | None = None,
    max_records: int | None = None,
    http: remote.HttpOptions | None = None,
    chunk_size: int = CHUNK_SIZE,
    max_block_bytes: int | None = None,
    base_url: str = remote.CC_BASE_URL,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[Record]:
    """Records of one file or URL. ``start``/``end`` read a slice of a gzip file: the records
    whose member starts in [start, end) (``start`` need not be on a member boundary).
    ``index:<file>`` reads the records that index file points to (see ``remote.read_index``)."""
    deadline = (http or remote.HttpOptions()).deadline()  # one overall deadline per source
    if location.startswith(remote.INDEX_PREFIX):
        rows = remote.read_index(location[len(remote.INDEX_PREFIX) :], http, base_url)
        yield from iter_pointers(
            rows[:max_records], http=http, base_url=base_url, max_block_bytes=max_block_bytes, deadline=deadline
        )
        return
    try:
        raw = remote.open_location(location, offset=start, http=http, deadline=deadline)
    except remote.SourceDeadlineError as e:  # could not even connect in time
        yield _failure(location, start, "source_deadline", str(e))
        return
    stream = None
    try:
        reader: BinaryIO = raw
        if start > 0:
            found = _seek_member(raw, start, chunk_size)
            if found is None or (end is not None and found[0] >= end):
                return
            start, reader = found[0], _Prefixed(found[1], raw)
        if on_progress:
            reader = _Progress(reader, on_progress)
        stream = MemberStream(reader, base=start, chunk_size=chunk_size)
        yield from parse_stream(stream, location, end=end, max_records=max_records, max_block_bytes=max_block_bytes)
    except remote.SourceDeadlineError as e:  # the rest of this source is lost: one failed record says so
        yield _failure(location, stream.offset_of(stream.tell()) if stream else start, "source_deadline", str(e))
    finally:
        raw.close()


class _Progress:
    """Wraps a raw stream to report bytes read (for progress artifacts on long inputs)."""

    def __init__(self, raw: BinaryIO, callback: Callable[[int], None]):
        self.raw, self.callback, self.n = raw, callback, 0

    def read(self, size: int = -1) -> bytes:
        b = self.raw.read(size)
        self.n += len(b)
        self.callback(self.n)
        return b


def _seek_member(raw: BinaryIO, start: int, chunk_size: int) -> tuple[int, bytes] | None:
    """Find the first gzip member at or after ``start`` (``raw`` is positioned there) whose
    content begins with ``WARC/``: return its offset and the bytes already read from it."""
    window = bytearray()
    pos = start  # file offset of window[0]
    while True:
        chunk = raw.read(chunk_size)
        window += chunk
        i = 0
        while True:
            i = window.find(GZIP_MAGIC + b"\x08", i)
            if i < 0 or (len(window) - i < 512 and chunk):
                break
            try:
                head = zlib.decompressobj(31).decompress(bytes(window[i : i + 4096]), 16)
            except zlib.error:
                head = b""
            if head.startswith(b"WARC/"):
                return pos + i, bytes(window[i:])
            i += 1
        if not chunk:
            return None
        keep = max(len(window) - 4096, i if i >= 0 else 0)
        pos += keep
        del window[:keep]


class _Prefixed:
    """``raw`` with ``prefix`` (bytes already read from it) put back in front."""

    def __init__(self, prefix: bytes, raw: BinaryIO):
        self.prefix, self.raw = prefix, raw

    def read(self, size: int = -1) -> bytes:
        if self.prefix:
            n = len(self.prefix) if size < 0 else size
            out, self.prefix = self.prefix[:n], self.prefix[n:]
            return out
        return self.raw.read(size)


def iter_pointers(
    pointers: Iterable,
    *,
    http: remote.HttpOptions | None = None,
    base_url: str = remote.CC_BASE_URL,
    max_block_bytes: int | None = None,
    deadline: float | None = None,
) -> Iterator[Record]:
    """Records at ``(file, offset, length)`` pointers (tuples or dicts with filename/offset/length,
    as the CC index returns them): one Range request (or seek) per record. Past ``deadline``
    (monotonic), each pointer left is one failed record (``source_deadline``)."""
    deadline = deadline if deadline is not None else (http or remote.HttpOptions()).deadline()
    for p in pointers:
        if isinstance(p, dict):
            file, offset, length = p["filename"], int(p["offset"]), int(p["length"])
        else:
            file, offset, length = p[0], int(p[1]), int(p[2])
        location = remote.resolve_location(file, base_url)
        try:
            raw = remote.open_location(location, offset=offset, length=length, http=http, deadline=deadline)
        except remote.SourceDeadlineError as e:
            yield _failure(location, offset, "source_deadline", str(e))
            continue
        except FileNotFoundError as e:  # one bad pointer is one lost record, not a lost shard
            yield _failure(location, offset, "source_not_found", str(e))
            continue
        except OSError as e:
            yield _failure(location, offset, "source_error", str(e))
            continue
        try:
            yield from parse_stream(
                MemberStream(raw, base=offset), location, max_records=1, max_block_bytes=max_block_bytes
            )
        except remote.SourceDeadlineError as e:
            yield _failure(location, offset, "source_deadline", str(e))
        finally:
            raw.close()


def iter_records(
    source, *, errors: str = "record", http: remote.HttpOptions | None = None, **kwargs
) -> Iterator[Record]:
    """Yield every record of ``source`` (see the module docstring for the accepted forms).

    ``errors="record"`` (default) yields unreadable records with ``error`` set;
    ``errors="raise"`` raises :class:`WarcFormatError` at the first one.
    Raises FileNotFoundError for a missing path or a glob that matches nothing (before reading).
    """
    if errors not in ("record", "raise"):
        raise ValueError(f"errors={errors!r}: use 'record' or 'raise'")
    if isinstance(source, (list, tuple)) and source and not isinstance(source[0], (str, Path)):
        it = iter_pointers(source, http=http)
    else:
        locations = remote.expand_sources(source if isinstance(source, (list, tuple)) else [source], http=http)
        it = (r for loc in locations for r in iter_file(loc, http=http, **kwargs))
    for rec in it:
        if rec.error and errors == "raise":
            raise WarcFormatError(f"{rec.source}: {rec.error} ({rec.error_detail})")
        yield rec
