"""Fuzz the WARC/WET/ARC reader (lm.data.warc, lm.data.gzstream) with mutated real records.

Inputs are consecutive records of the real files in ``reference/commoncrawl`` (WARC, WET, WAT,
ClueWeb09 ``WARC/0.18``, block-sized records) and pywb's ``example.arc``, possibly mixed across
files, then damaged (warcfuzz.py builds them and defines what "accounted" means). Properties:
a mangled plain stream is accounted; the same stream in gzip members of any cut and read in
any chunk size gives the same records; damaged compressed bytes never pass as a clean record;
slice reads partition the records. The regression tests at the end are the minimal examples
of bugs these found.
"""

from __future__ import annotations

import gzip

import pytest
from fuzzkit import call_with_timeout, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from warcfuzz import (
    KINDS,
    MAX_LINE,
    Stream,
    arc_records,
    check_accounted,
    corpus,
    damaged_gzip,
    gzip_members,
    iter_one,
    mangled,
    member_of,
    read_all,
    record_offset,
    warc_id,
)

from lm.data.warc import iter_file, iter_records


@pytest.mark.parametrize("mode", ["plain", "gzip"])
def test_mangled_stream_is_accounted(reference, tmp_path, mode):
    @fuzz_settings(ci_examples=300)
    @given(
        stream=mangled(reference),
        cuts=st.lists(st.integers(0, 1 << 20), max_size=4),
        chunk_size=st.sampled_from([3, 64, 511, 4096, 65536]),
        data=st.data(),
    )
    def run(stream, cuts, chunk_size, data):
        path = tmp_path / "in.warc"
        path.write_bytes(stream.data)
        recs = call_with_timeout(read_all, path)
        check_accounted(stream, recs)
        if mode == "gzip" and not stream.data.startswith(
            b"\x1f\x8b"
        ):  # (plain bytes that start like gzip are read as gzip)
            # Member cuts: the record starts plus arbitrary points (records span members; empty members).
            n = len(stream.data)
            record_cuts = [record_offset(r) for r in recs]
            extra = [c % (n + 1) for c in cuts] + data.draw(st.lists(st.sampled_from([0, n, *record_cuts]), max_size=2))
            gz, spans = gzip_members(stream.data, record_cuts + extra)
            gpath = tmp_path / "gz" / "in.warc"  # same name: ids of records without a WARC-Record-ID use it
            gpath.parent.mkdir(exist_ok=True)
            gpath.write_bytes(gz)
            grecs = call_with_timeout(lambda: list(iter_file(str(gpath), chunk_size=chunk_size)))
            want = [(warc_id(r), r.error, r.payload, r.record_type, member_of(spans, record_offset(r))) for r in recs]
            got = [(warc_id(r), r.error, r.payload, r.record_type, record_offset(r)) for r in grecs]
            assert got == want

    run()


def test_damaged_gzip_never_passes_bad_data(reference, tmp_path):
    @fuzz_settings(ci_examples=400)
    @given(case=damaged_gzip(reference), chunk_size=st.sampled_from([3, 64, 511, 4096, 65536]))
    def run(case, chunk_size):
        chunks, members, offsets, edits, raw = case.chunks, case.members, case.offsets, case.edits, case.raw
        kept, last = [], 0
        for a, b, rep in sorted(edits):
            if a >= last:
                kept.append((a, b, rep))
                last = max(b, a + 1)
        out, pos = [], 0
        for a, b, rep in kept:
            out += [raw[pos:a], rep]
            pos = b
        out.append(raw[pos:])
        data = b"".join(out)
        path = tmp_path / "in.warc.gz"
        path.write_bytes(data)
        recs = call_with_timeout(lambda: list(iter_file(str(path), chunk_size=chunk_size)))
        assert {r.error for r in recs} <= KINDS | {None}, [r.error for r in recs]
        srcs = [record_offset(r) for r in recs]
        assert srcs == sorted(srcs), srcs
        originals = {(warc_id(iter_one(c)), iter_one(c).payload) for c in chunks}
        for r in recs:
            if r.error is None:
                assert (warc_id(r), r.payload) in originals, (
                    f"record at {r.source} passed without error but its content is not an original record's"
                )

        def shifted(p):  # new position of original byte p (an insertion at p lands before it)
            return p + sum(len(rep) - (b - a) for a, b, rep in kept if b <= p)

        for k, off in enumerate(offsets):
            end = off + len(members[k])
            if not all(b <= off or a >= end or (a == b == off) for a, b, _ in kept) or shifted(end - 1) + 1 > len(data):
                continue  # damaged or cut off
            n = shifted(off)
            c = iter_one(chunks[k])
            delivered = any(record_offset(r) == n and r.error is None and warc_id(r) == warc_id(c) for r in recs)
            before = [r for r in recs if record_offset(r) <= n]
            assert delivered or any(r.error for r in before), (
                f"intact member at {n} neither delivered nor after a failed record"
            )

    run()


SLICE_FILES = ["whirlwind.warc.gz", "warcfile.warc.gz", "block-sized-records.warc.gz", "whirlwind.warc.wet.gz"]


def test_slices_partition_the_records(reference):
    """Reading [start, end) slices (what a shard task does) gives exactly the records whose
    member starts in the slice, for any cut points: consecutive slices neither lose nor repeat."""
    full = {
        name: [(record_offset(r), r.id) for r in iter_file(str(reference / "commoncrawl" / name))]
        for name in SLICE_FILES
    }

    @fuzz_settings(ci_examples=60)
    @given(
        name=st.sampled_from(SLICE_FILES),
        cuts=st.lists(st.integers(0, 600_000), max_size=5),
        chunk_size=st.sampled_from([512, 4096, 65536]),
    )
    def run(name, cuts, chunk_size):
        path = reference / "commoncrawl" / name
        size = path.stat().st_size
        points = [0, *sorted({c % (size + 1) for c in cuts}), size + 1]
        got = []
        for a, b in zip(points, points[1:]):
            part = call_with_timeout(
                lambda: [(record_offset(r), r.id) for r in iter_file(str(path), start=a, end=b, chunk_size=chunk_size)]
            )
            assert all(a <= off < b for off, _ in part), (a, b, part)
            got += part
        assert got == full[name]

    run()


def test_mangled_arc_is_accounted(tmp_path):
    chunks = arc_records()
    assert len(chunks) == 2 and chunks[1].startswith(b"http://example.com/")

    @fuzz_settings(ci_examples=200)
    @given(stream=mangled(None, fixed=chunks))
    def run(stream):
        path = tmp_path / "in.arc"
        path.write_bytes(stream.data)
        check_accounted(stream, call_with_timeout(read_all, path))

    run()


# --------------------------------------------------------------------------- regressions found by the fuzzers


@pytest.mark.parametrize("chunk_size", [3, 64, 65536])
def test_record_of_member_with_bad_crc_is_failed(tmp_path, chunk_size):
    """Found by test_damaged_gzip_never_passes_bad_data: a member whose deflate data decodes
    but whose CRC does not match yielded its record *without* error when read in small chunks
    (zlib checks the CRC only at the member's end), then a separate tail error."""
    good = b"WARC/1.0\r\nWARC-Type: resource\r\nWARC-Record-ID: <urn:uuid:1>\r\nContent-Length: 5\r\n\r\nhello\r\n\r\n"
    member = bytearray(gzip.compress(good, mtime=0))
    member[-8] ^= 0xFF  # CRC32 of the trailer
    first = gzip.compress(good.replace(b"uuid:1", b"uuid:0"), mtime=0)
    path = tmp_path / "bad-crc.warc.gz"
    path.write_bytes(first + bytes(member))
    recs = list(iter_file(str(path), chunk_size=chunk_size))
    assert [(r.error, record_offset(r)) for r in recs] == [(None, 0), ("corrupt_gzip", len(first))]
    assert recs[0].payload == b"hello"


def test_arc_record_glued_to_a_too_long_block_is_not_trusted(tmp_path):
    """Found by test_mangled_arc_is_accounted: with 3 bytes cut from example.arc's first block
    (declared length unchanged), the block ate the next header's "h", and "ttp://example.com/ …"
    in mid-line passed as a clean ARC record start; neither record was flagged."""
    data = b"".join(arc_records())
    path = tmp_path / "cut.arc"
    path.write_bytes(data[:74] + data[77:])
    recs = list(iter_records(str(path)))
    assert [r.error for r in recs] == ["bad_content_length"]
    assert not any(r.url.startswith("ttp:") for r in recs)


def test_header_block_running_into_a_warc_line_is_failed(reference, tmp_path):
    """Found by the fuzz-chaos profile: a damaged blank line after record 1's headers made the
    reader read record 1's block and record 2's header as header lines (no field starts with
    "WARC/"), then record 2's block as record 1's: one clean record, record 1's payload lost
    silently. A WARC/ line inside a header block now ends it as bad_header and starts the
    next record; likewise for a junk "WARC/" line before a record."""
    chunks = corpus(reference)["block-sized-records.warc.gz"][:2]
    stream = Stream(chunks, [(150, 151, b"\x0f")])  # "\r\n\r\n" after the headers -> "\r\n\x0f\n"
    path = tmp_path / "run-on.warc"
    path.write_bytes(stream.data)
    recs = read_all(path)
    assert [(r.error, record_offset(r)) for r in recs] == [("bad_header", 0), (None, len(chunks[0]))]
    assert recs[1].payload == iter_one(chunks[1]).payload
    check_accounted(stream, recs)

    junk = Stream(chunks[:1], [(0, 0, b"WARC/\n")])
    path.write_bytes(junk.data)
    recs = read_all(path)
    assert [(r.error, record_offset(r)) for r in recs] == [("bad_header", 0), (None, 6)]
    check_accounted(junk, recs)


def test_header_line_split_at_the_line_limit_is_one_line(tmp_path):
    """Found by the fuzz-chaos profile (a header line padded to the 64 KiB line limit): a line
    of MAX_LINE + 1 bytes came in two pieces, "...\\r" and "\\n"; the second was taken for the
    blank line ending the header, so the next header line was read as the block and good
    records were failed (or mis-delimited)."""
    pad = b"X-Pad: " + b"A" * (MAX_LINE + 1 - 9) + b"\r\n"
    assert len(pad) == MAX_LINE + 1
    rec = (
        b"WARC/1.0\r\nWARC-Type: resource\r\nWARC-Record-ID: <urn:uuid:1>\r\nContent-Length: 5\r\n"
        + pad
        + b"WARC-Target-URI: http://x/\r\n\r\nhello\r\n\r\n"
    )
    path = tmp_path / "long-line.warc"
    path.write_bytes(rec + rec.replace(b"uuid:1", b"uuid:2"))
    recs = read_all(path)
    assert [(r.error, r.payload, r.url) for r in recs] == [(None, b"hello", "http://x/")] * 2
    assert [record_offset(r) for r in recs] == [0, len(rec)]
