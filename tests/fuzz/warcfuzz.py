"""Inputs and properties of the WARC reader fuzz suite (test_fuzz_warc.py): mangled streams, "accounted".

Inputs are consecutive records of the real files in ``reference/commoncrawl`` (WARC, WET, WAT,
ClueWeb09 ``WARC/0.18``, block-sized records), possibly mixed across files, then damaged:
truncated at any boundary, bytes flipped, garbage / fake record starts / huge lines / non-UTF-8
inserted, header lines duplicated or dropped, Content-Length made absurd, negative or non-numeric.

What "accounted" means (``check_accounted``), for a plain (uncompressed) mangled stream read
with ``errors="record"``:

1. the reader returns (no exception) within the wall limit;
2. record offsets strictly increase and every ``error`` is a documented kind;
3. the records tile the input: record *i* owns the bytes from its offset to the next record's
   (the last one: to the end); bytes before the first record are whitespace, and an input
   with no record at all is whitespace only;
4. a record without ``error`` owns exactly its header lines, the blank line, Content-Length
   bytes of block and whitespace: nothing that is not blank is ever skipped silently. Bytes
   a resynchronisation skips belong to a record with ``error`` set (or to the tail error);
5. every original record the mutation left intact comes out unchanged (same id and payload,
   no error) at its new offset, or lies inside a record with ``error`` set, or inside the
   block of a damaged record whose (damaged) Content-Length covers it.

The same stream split into gzip members at arbitrary points (empty members included) and read
with arbitrary chunk sizes must give the same records (the gzip layer is transparent; sources
become member offsets). Damage to the compressed bytes themselves (flips, truncation, garbage,
duplicated members) must never yield a record without ``error`` whose content differs from an
original record, and every intact original member is delivered or lies in a failed record's range.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from pathlib import Path

from hypothesis import strategies as st

from lm.data.gzstream import MAX_LINE, MemberStream
from lm.data.warc import iter_records, parse_stream

KINDS = {"truncated_gzip", "truncated_record", "corrupt_gzip", "not_warc", "bad_header", "bad_content_length"}
FILES = [
    "whirlwind.warc.gz",
    "whirlwind.warc.wet.gz",
    "whirlwind.warc.wat.gz",
    "block-sized-records.warc.gz",
    "warcfile.warc.gz",
    "clueweb-quirk.warc.gz",
]
MAX_RECORDS = 3  # consecutive records per example (keeps an example well under 400 KB)


def _members(data: bytes) -> list[bytes]:
    """Decompressed contents of each gzip member (one record each in these files)."""
    out, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        out.append(d.decompress(data[pos:]))
        assert d.eof
        pos = len(data) - len(d.unused_data)
    return out


def _layout(chunk: bytes) -> tuple[int, int]:
    """(header end, block end) of one record chunk: WARC headers end at the first blank line,
    an ARC header is one line ending in the block length."""
    if not chunk.startswith(b"WARC/"):
        hdr_end = chunk.index(b"\n") + 1
        return hdr_end, hdr_end + max(0, int(chunk[:hdr_end].split()[-1]))
    m = re.search(rb"\r?\n\r?\n", chunk)
    hdr_end = m.end()
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", chunk[:hdr_end]).group(1))
    return hdr_end, hdr_end + length


_CORPUS: dict[str, list[bytes]] = {}


def corpus(reference: Path) -> dict[str, list[bytes]]:
    if not _CORPUS:
        for name in FILES:
            recs = _members((reference / "commoncrawl" / name).read_bytes())
            _CORPUS[name] = [r for r in recs if len(r) < 120_000]  # keep examples small and fast
    return _CORPUS


# --------------------------------------------------------------------------- the mangled stream


class Stream:
    """Original records laid end to end, a list of edits in original coordinates, and the result."""

    def __init__(self, chunks: list[bytes], edits: list[tuple[int, int, bytes]]):
        self.chunks = chunks
        self.original = b"".join(chunks)
        starts, pos = [], 0
        for c in chunks:
            starts.append(pos)
            pos += len(c)
        # (record start, header end, block end) in original coordinates
        self.records = [(s, s + h, s + b) for s, (h, b) in zip(starts, map(_layout, chunks))]
        kept, last = [], 0
        for a, b, rep in sorted(edits):
            if a >= last:  # drop edits overlapping an earlier one
                kept.append((a, b, rep))
                last = max(b, a + 1)
        self.edits = kept
        out, pos = [], 0
        for a, b, rep in kept:
            out += [self.original[pos:a], rep]
            pos = b
        out.append(self.original[pos:])
        self.data = b"".join(out)

    def __repr__(self) -> str:
        edits = [(a, b, rep[:40] + (b"..." if len(rep) > 40 else b""), len(rep)) for a, b, rep in self.edits]
        return f"Stream(records={[len(c) for c in self.chunks]}, heads={[c[:60] for c in self.chunks]}, edits={edits})"

    def new_pos(self, p: int) -> int:
        """Where original byte ``p`` of an untouched stretch is after the edits (an insertion
        at ``p`` lands before it)."""
        return p + sum(len(rep) - (b - a) for a, b, rep in self.edits if b <= p)

    def new_end(self, e: int) -> int:
        """Where an untouched stretch ending (exclusive) at ``e`` ends after the edits."""
        return self.new_pos(e - 1) + 1

    def intact(self, j: int) -> bool:
        s, _, e = self.records[j]

        # Untouched: no edit overlaps [s, e) or the newline before it (records start lines),
        # and no insertion inside it; bytes inserted just before it count only if they end a
        # line (else they join the record's first line).
        def touches(a: int, b: int, rep: bytes) -> bool:
            if a == b:  # an insertion
                return s < a < e or (a == s and not rep.endswith(b"\n"))
            return a < e and b > max(s - 1, 0)

        return not any(touches(*edit) for edit in self.edits)


def _positions(chunks: list[bytes]) -> list[int]:
    """Boundaries worth hitting: record starts, header ends, block ends, and their neighbours."""
    out, pos = [], 0
    for c in chunks:
        h, b = _layout(c)
        for p in (pos, pos + h, pos + b, pos + len(c)):
            out += [p - 2, p - 1, p, p + 1, p + 2]
        pos += len(c)
    return sorted({p for p in out if 0 <= p <= pos})


GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.sampled_from(
        [
            b"WARC/1.0\r\n",
            b"WARC/1.0\r\n\r\n",
            b"\r\n\r\n",
            b"\n",
            b"\x00" * 16,
            b"\xff\xfe\xc3\x28\xa0\xa1",
            b"WARC/1.0\r\nContent-Length: 5\r\n\r\nhello\r\n\r\n",
            b"WARC/1.0\r\nContent-Length: -5\r\n\r\n",
            b"http://a.b/ 1.2.3.4 20240101000000 text/html 5\n",
            b"\x1f\x8b\x08\x00",
        ]
    ),
    st.integers(1, 200_000).map(lambda n: b"A" * n),  # huge header line (MAX_LINE is 64 KiB)
)
CONTENT_LENGTHS = st.one_of(
    st.sampled_from(
        [b"-1", b"-99999", b"", b"abc", b"1e3", b"0x10", b"99999999999999999999999", b" 12 ", b"\xff\xfe", b"0", b"1"]
    ),
    st.integers(0, 1 << 62).map(lambda n: str(n).encode()),
)


@st.composite
def mangled(draw, reference: Path | None, fixed: list[bytes] | None = None) -> Stream:
    """Records of the corpus (or exactly ``fixed``), then 0-4 edits."""
    if fixed is not None:
        chunks = list(fixed)
    else:
        files = corpus(reference)
        chunks = []
        for _ in range(draw(st.integers(1, 2))):  # one run of records, or two from different files
            recs = files[draw(st.sampled_from(sorted(files)))]
            i = draw(st.integers(0, len(recs) - 1))
            chunks += recs[i : i + draw(st.integers(1, MAX_RECORDS))]
        chunks = chunks[:MAX_RECORDS]
    original = b"".join(chunks)
    total = len(original)
    hot = _positions(chunks)
    pos = st.one_of(st.sampled_from(hot), st.integers(0, total))
    edits = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(
            st.sampled_from(
                [
                    "truncate",
                    "flip",
                    "insert",
                    "delete",
                    "content_length",
                    "dup_header",
                    "drop_header",
                    "header_bytes",
                    "long_line",
                ]
            )
        )
        if kind == "truncate":
            edits.append((p := draw(pos), total, b""))
        elif kind == "flip":
            p = draw(st.one_of(pos, st.integers(0, max(total - 1, 0)))) if total else 0
            if p < total:
                edits.append((p, p + 1, bytes([original[p] ^ draw(st.integers(1, 255))])))
        elif kind == "insert":
            p = draw(pos)
            edits.append((p, p, draw(GARBAGE)))
        elif kind == "delete":
            p = draw(pos)
            edits.append((p, min(total, p + draw(st.integers(1, 300))), b""))
        else:  # header-line edits on one record
            j = draw(st.integers(0, len(chunks) - 1))
            start = sum(map(len, chunks[:j]))
            head = chunks[j][: _layout(chunks[j])[0]]
            lines = [m.span() for m in re.finditer(rb"[^\n]*\n", head)][1:-1]  # header lines, not WARC/ or the blank
            if kind == "content_length" and not head.startswith(b"WARC/"):  # ARC: the last field of its line
                m = re.search(rb"(\S+)\r?\n$", head)
                edits.append((start + m.start(1), start + m.end(1), draw(CONTENT_LENGTHS)))
                continue
            if not lines:
                continue
            if kind == "content_length":
                m = re.search(rb"(?im)^content-length:[ \t]*(\d+)", head)
                edits.append((start + m.start(1), start + m.end(1), draw(CONTENT_LENGTHS)))
                continue
            a, b = lines[draw(st.integers(0, len(lines) - 1))]
            if kind == "dup_header":
                edits.append((start + b, start + b, head[a:b]))
            elif kind == "drop_header":
                edits.append((start + a, start + b, b""))
            elif kind == "long_line":  # a header line padded to the reader's line limit, give or take
                pad = MAX_LINE + draw(st.integers(-3, 3)) - (b - a)
                if pad > 0:
                    edits.append((start + b - 2, start + b - 2, draw(st.sampled_from([b"A", b" ", b":"])) * pad))
            else:  # non-UTF-8 / control bytes in a header line
                edits.append((start + b - 2, start + b - 2, draw(st.binary(min_size=1, max_size=20))))
    return Stream(chunks, edits)


# --------------------------------------------------------------------------- the properties


def read_all(path: Path, **kw) -> list:
    return list(iter_records(str(path), **kw))


def record_offset(rec) -> int:
    return int(rec.source.rsplit(":", 1)[1])


def _content_length(rec) -> int:
    """The Content-Length the reader used: the exact name first, else the first in any case."""
    v = rec.headers.get("Content-Length")
    if v is None:
        v = next(v for k, v in rec.headers.items() if k.lower() == "content-length")
    return int(v)


def _header_end(data: bytes, start: int) -> int:
    """Where the reader's header block starting at ``start`` ends (after the first blank line)."""
    pos = data.index(b"\n", start) + 1  # the WARC/ line
    while True:
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos : nl + 1]
        pos = len(data) if nl < 0 else nl + 1
        if not line.strip():
            return pos


def check_accounted(stream: Stream, recs: list) -> None:
    data = stream.data
    offsets = [record_offset(r) for r in recs]
    assert offsets == sorted(set(offsets)), f"record offsets not strictly increasing: {offsets}"
    assert {r.error for r in recs} <= KINDS | {None}, [r.error for r in recs]
    if not recs:
        assert not data.strip(), "a non-blank input produced no record at all"
        return
    assert not data[: offsets[0]].strip(), f"bytes before the first record were skipped: {data[: offsets[0]][:80]!r}"
    ends = offsets[1:] + [len(data)]
    blocks = []  # (start, end) of each error-free record's block
    for r, s, nxt in zip(recs, offsets, ends):
        if r.error:
            continue
        if data.startswith(b"WARC/", s):
            body = _header_end(data, s)
            end = body + _content_length(r)
        else:  # ARC: one header line (the last may lack its newline), then the length it ends with (-1 = none)
            nl = data.find(b"\n", s)
            body = len(data) if nl < 0 else nl + 1
            end = body + int(r.headers["length"])
        assert end <= nxt, f"record at {s}: block ends at {end}, after the next record at {nxt}"
        assert not data[end:nxt].strip(), (
            f"record at {s}: non-blank bytes skipped after its block: {data[end:nxt][:80]!r}"
        )
        blocks.append((body, end, s))
    for j, (s0, _, e0) in enumerate(stream.records):
        if not stream.intact(j) or stream.new_end(e0) > len(data):
            continue
        n, e = stream.new_pos(s0), stream.new_end(e0)
        assert offsets[0] <= n, f"intact record at {n} lies before the first record"
        k = max(i for i, s in enumerate(offsets) if s <= n)
        r = recs[k]
        if r.error:
            continue  # inside a failed record's range: counted as failed
        if offsets[k] == n:
            orig = iter_one(stream.chunks[j])
            assert (warc_id(r), r.payload, r.record_type, r.url) == (
                warc_id(orig),
                orig.payload,
                orig.record_type,
                orig.url,
            )
        else:  # inside an error-free record: only within the block its (damaged) Content-Length declares
            assert any(b <= n and e <= end for b, end, s in blocks if s == offsets[k]), (
                f"intact record at {n} silently dropped inside the record at {offsets[k]}"
            )


_ONE: dict[bytes, object] = {}


def iter_one(chunk: bytes):
    """The record a clean chunk parses to (memoised: the corpus is small)."""
    if chunk not in _ONE:
        (_ONE[chunk],) = list(parse_stream(MemberStream(io.BytesIO(chunk)), "x"))
    return _ONE[chunk]


def gzip_members(data: bytes, cuts: list[int]) -> tuple[bytes, list[tuple[int, int]]]:
    """``data`` cut into gzip members at ``cuts``; returns the file and (plain start, member offset)."""
    out, spans, prev = bytearray(), [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        spans.append((prev, len(out)))
        out += gzip.compress(data[prev:c], mtime=0)
        prev = c
    return bytes(out), spans


def warc_id(rec) -> str | None:
    """The record's WARC-Record-ID (``rec.id`` hashes the file and offset, which differ between
    the plain and the gzip form of the same records)."""
    return rec.headers.get("WARC-Record-ID")


def member_of(spans: list[tuple[int, int]], p: int) -> int:
    return [off for start, off in spans if start <= p][-1]


@st.composite
def damaged_gzip(draw, reference: Path):
    files = corpus(reference)
    name = draw(st.sampled_from(sorted(files)))
    i = draw(st.integers(0, len(files[name]) - 1))
    chunks = files[name][i : i + draw(st.integers(1, MAX_RECORDS))]
    members = [gzip.compress(c, mtime=0) for c in chunks]
    offsets = [sum(map(len, members[:k])) for k in range(len(members))]
    raw = b"".join(members)
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "dup_member", "empty_member", "padding"]))
        hot = sorted(
            {o + d for o in offsets + [len(raw)] for d in (0, 1, 2, 3, 4, 9, 10, -8, -4, -1)} & set(range(len(raw) + 1))
        )
        p = draw(st.one_of(st.sampled_from(hot), st.integers(0, len(raw))))
        if kind == "flip" and p < len(raw):
            edits.append((p, p + 1, bytes([raw[p] ^ draw(st.integers(1, 255))])))
        elif kind == "truncate":
            edits.append((p, len(raw), b""))
        elif kind == "insert":
            edits.append((p, p, draw(GARBAGE)))
        elif kind == "dup_member":
            k = draw(st.integers(0, len(members) - 1))
            edits.append((offsets[k], offsets[k], members[k]))
        elif kind == "empty_member":
            q = draw(st.sampled_from(offsets + [len(raw)]))
            edits.append((q, q, gzip.compress(b"", mtime=0)))
        elif kind == "padding":
            edits.append((len(raw), len(raw), b"\x00" * draw(st.integers(1, 600))))
    return GzCase(chunks, members, offsets, edits, raw)


class GzCase:
    def __init__(self, chunks, members, offsets, edits, raw):
        self.chunks, self.members, self.offsets, self.edits, self.raw = chunks, members, offsets, edits, raw

    def __repr__(self) -> str:
        edits = [(a, b, rep[:40], len(rep)) for a, b, rep in self.edits]
        return (
            f"GzCase(members at {self.offsets} of sizes {[len(m) for m in self.members]}, "
            f"heads={[c[:40] for c in self.chunks]}, edits={edits})"
        )


_ARC: list[bytes] = []


def arc_records() -> list[bytes]:
    """The records of pywb's example.arc (a real ARC v1 capture), one chunk each."""
    if not _ARC:
        from flows.demo import demo_sources

        data = (Path(demo_sources()[0]) / "example.arc").read_bytes()
        offsets = [record_offset(r) for r in iter_file_plain(data)] + [len(data)]
        _ARC.extend(data[a:b] for a, b in zip(offsets, offsets[1:]))
    return _ARC


def iter_file_plain(data: bytes) -> list:
    return list(parse_stream(MemberStream(io.BytesIO(data)), "x"))
