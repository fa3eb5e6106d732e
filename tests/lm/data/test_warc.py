import gzip
import hashlib
import zlib
from collections import Counter

import pytest

from lm.data.warc import Record, WarcFormatError, iter_file, iter_records, split_http

CC = "commoncrawl"


def members(path):
    """Independent record inventory of a per-record gzip WARC: (offset, length, WARC-Type)."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        body = d.decompress(data[pos:])
        assert d.eof, f"member at {pos} is incomplete"
        end = len(data) - len(d.unused_data)
        head = body.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        assert head.startswith("WARC/")
        wtype = next(
            line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("warc-type:")
        )
        out.append((pos, end - pos, wtype))
        pos = end
    return out


@pytest.mark.parametrize(
    "name",
    [
        "warcfile.warc.gz",
        "clueweb-quirk.warc.gz",
        "whirlwind.warc.gz",
        "block-sized-records.warc.gz",
        "whirlwind.warc.wet.gz",
    ],
)
def test_every_record_read_at_its_member_offset(reference, name):
    path = reference / CC / name
    expected = members(path)
    recs = list(iter_records(str(path)))
    assert [r.error for r in recs] == [None] * len(expected)
    assert [int(r.source.rsplit(":", 1)[1]) for r in recs] == [off for off, _, _ in expected]
    assert [r.record_type for r in recs] == [t for _, _, t in expected]
    assert all(r.source.startswith(str(path) + ":") for r in recs)


def test_warcfile_counts_and_fields(reference):
    recs = list(iter_records(str(reference / CC / "warcfile.warc.gz")))
    assert Counter(r.record_type for r in recs) == {"warcinfo": 1, "request": 17, "response": 16, "metadata": 16}
    resp = next(r for r in recs if r.record_type == "response")
    assert resp.url == "http://003338.cn/l41/481397.html"
    assert resp.http_status == 200
    assert resp.mime == "text/html"
    assert resp.date.startswith("2020-08")
    # the id hashes where the record is (file and offset), so archives that share
    # WARC-Record-IDs, or one file read twice, cannot give two documents one id
    assert resp.id == hashlib.sha256(resp.source.encode()).hexdigest()[:16]
    assert len({r.id for r in recs}) == len(recs)


def test_clueweb_quirks(reference):
    recs = list(iter_records(str(reference / CC / "clueweb-quirk.warc.gz")))
    assert len(recs) == 30 and not any(r.error for r in recs)
    r = recs[1]
    # HTTP headers end in bare LF; Content-Encoding says gzip but the body is stored decoded.
    assert r.http_status == 200
    assert r.content_type == "text/html; charset=EUC-JP"
    assert r.payload.startswith(b"<html>")
    assert r.headers["WARC-TREC-ID"] == "clueweb09-ja0016-50-00000"


def test_clipped_gzip_is_one_failed_record(reference):
    recs = list(iter_records(str(reference / CC / "clipped.warc.gz")))
    assert len(recs) == 1
    r = recs[0]
    assert r.error == "truncated_gzip"
    assert r.url.startswith("http://www.houstonpress.com/music/")
    assert 0 < len(r.payload) < 88275
    with pytest.raises(WarcFormatError, match="truncated_gzip"):
        list(iter_records(str(reference / CC / "clipped.warc.gz"), errors="raise"))


@pytest.mark.parametrize("chunk_size", [1, 7, 512, 16384, 16386])
def test_chunk_boundaries_do_not_change_records(reference, chunk_size):
    for name in ("block-sized-records.warc.gz", "whirlwind.warc.gz"):
        path = str(reference / CC / name)
        a = [(r.id, r.source, r.payload) for r in iter_file(path)]
        b = [(r.id, r.source, r.payload) for r in iter_file(path, chunk_size=chunk_size)]
        assert a == b


def test_plain_and_single_member_gzip(reference, tmp_path):
    src = reference / CC / "whirlwind.warc.gz"
    plain = tmp_path / "w.warc"
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    one = tmp_path / "w1.warc.gz"
    one.write_bytes(gzip.compress(plain.read_bytes()))
    key = lambda r: (r.headers["WARC-Record-ID"], r.payload)  # ids hash the location: they differ per file
    ref = [key(r) for r in iter_records(str(src))]
    assert [key(r) for r in iter_records(str(plain))] == ref
    assert [key(r) for r in iter_records(str(one))] == ref
    # one gzip member: every record has its offset (0); the position inside it tells their ids apart
    assert len({r.id for r in iter_records(str(one))}) == len(ref)
    # plain offsets are byte offsets of the "WARC/" line; one-member gzip: all in member 0
    raw = plain.read_bytes()
    offs = [int(r.source.rsplit(":", 1)[1]) for r in iter_records(str(plain))]
    assert all(raw[o : o + 5] == b"WARC/" for o in offs)
    assert {r.source.rsplit(":", 1)[1] for r in iter_records(str(one))} == {"0"}


def test_pointers_read_one_record_each(reference):
    path = reference / CC / "warcfile.warc.gz"
    inv = members(path)
    ptrs = [(str(path), off, n) for off, n, t in inv if t == "response"][:5]
    recs = list(iter_records(ptrs))
    full = {r.source: r for r in iter_records(str(path))}
    assert [r.source for r in recs] == [f"{path}:{off}" for _, off, _ in ptrs]
    assert [r.payload for r in recs] == [full[r.source].payload for r in recs]
    assert [r.id for r in recs] == [full[r.source].id for r in recs]  # fetched by pointer or read in a scan: one id
    # CC index style dicts
    recs2 = list(iter_records([{"filename": str(path), "offset": str(o), "length": str(n)} for _, o, n in ptrs]))
    assert [r.id for r in recs2] == [r.id for r in recs]


@pytest.mark.parametrize("slice_bytes", [1000, 10_000, 50_000])
def test_slices_partition_the_records(reference, slice_bytes):
    path = str(reference / CC / "warcfile.warc.gz")
    size = (reference / CC / "warcfile.warc.gz").stat().st_size
    whole = [r.source for r in iter_file(path)]
    parts = []
    for start in range(0, size, slice_bytes):
        parts += [r.source for r in iter_file(path, start=start, end=start + slice_bytes)]
    assert parts == whole


def test_not_a_warc(reference, tmp_path):
    recs = list(iter_records(str(reference / CC / "CC-MAIN-2024-22.warc.paths.gz")))
    assert [r.error for r in recs] == ["not_warc"]
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\nworld\n")
    assert [r.error for r in iter_records(str(txt))] == ["not_warc"]


def test_empty_file_has_no_records(tmp_path):
    (tmp_path / "empty.warc.gz").write_bytes(b"")
    assert list(iter_records(str(tmp_path / "empty.warc.gz"))) == []


def test_missing_paths_fail_before_reading(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.warc.gz"):
        iter_records(str(tmp_path / "nope.warc.gz")).__next__()
    with pytest.raises(FileNotFoundError, match=r"\*.warc.gz"):
        next(iter_records(str(tmp_path / "*.warc.gz")))


def test_glob_reads_files_in_order(reference):
    recs = list(iter_records(str(reference / CC / "whirlwind.warc*.gz")))
    files = [r.source.rsplit(":", 1)[0].rsplit("/", 1)[1] for r in recs]
    assert files == ["whirlwind.warc.gz"] * 4 + ["whirlwind.warc.wat.gz"] * 2 + ["whirlwind.warc.wet.gz"] * 2


def test_corrupt_gzip_counts_the_loss(reference, tmp_path):
    data = bytearray((reference / CC / "whirlwind.warc.gz").read_bytes())
    data[1100:1200] = b"\x00" * 100  # inside the response member (offset 1023)
    bad = tmp_path / "bad.warc.gz"
    bad.write_bytes(bytes(data))
    recs = list(iter_records(str(bad)))
    assert [r.error for r in recs[:2]] == [None, None]
    assert recs[2].error == "corrupt_gzip"
    assert recs[2].source.endswith(":1023")


def test_bad_content_length_is_flagged_and_reader_resyncs(reference, tmp_path):
    raw = gzip.decompress((reference / CC / "whirlwind.warc.gz").read_bytes())
    # Shorten the request record's declared length by 12: its block ends early, junk follows.
    i = raw.index(b"Content-Length: 265")
    raw = raw[:i] + b"Content-Length: 253" + raw[i + 19 :]
    p = tmp_path / "cl.warc"
    p.write_bytes(raw)
    recs = list(iter_records(str(p)))
    assert [r.record_type for r in recs] == ["warcinfo", "request", "response", "metadata"]
    assert [r.error for r in recs] == [None, "bad_content_length", None, None]


def test_split_http_chunked_and_gzip():
    body = gzip.compress(b"<p>hi</p>")
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    block = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\nContent-Type: text/html\r\n\r\n"
        + chunked
    )
    status, headers, payload = split_http(block)
    assert (status, headers["Content-Type"], payload) == (200, "text/html", b"<p>hi</p>")


def test_record_mime():
    r = Record(
        id="x",
        url="u",
        source="s:0",
        record_type="response",
        content_type="Text/HTML; charset=utf-8",
        date="",
        payload=b"",
    )
    assert r.mime == "text/html"


def test_pywb_sample_archives_arc_and_quirks():
    """The sample archives in the pywb wheel (real captures; ARC, plain WARC, broken files)."""
    from flows.demo import demo_sources

    warcs = demo_sources()[0]
    from pathlib import Path

    d = Path(warcs)
    arc = list(iter_records(str(d / "example.arc")))
    arcgz = list(iter_records(str(d / "example.arc.gz")))
    assert [r.record_type for r in arc] == ["warcinfo", "response"]
    assert [(r.url, r.payload) for r in arc] == [(r.url, r.payload) for r in arcgz]
    assert arc[1].url == "http://example.com/" and arc[1].http_status == 200 and arc[1].mime == "text/html"
    assert arc[1].date == "20140216050221"
    bad = list(iter_records(str(d / "bad.arc")))
    assert [r.error for r in bad] == ["bad_content_length", None, None, "bad_header"]
    # pywb's example.warc declares a request 3 bytes short: flagged, the next record still read
    ex = list(iter_records(str(d / "example.warc")))
    assert [r.record_type for r in ex] == ["warcinfo", "response", "request", "revisit", "request", "response"]
    assert [r.error for r in ex] == [None, None, None, None, "bad_content_length", None]
    total = sum(1 for f in sorted(d.iterdir()) if not f.name.startswith(".") for _ in iter_records(str(f)))
    assert total == 425


def test_huge_blocks_are_skipped_unread(reference):
    path = reference / CC / "warcfile.warc.gz"
    full = list(iter_file(str(path)))
    capped = list(iter_file(str(path), max_block_bytes=20_000))
    assert [r.source for r in capped] == [r.source for r in full]
    big = [int(r.headers["Content-Length"]) > 20_000 for r in full]
    assert [r.oversized for r in capped] == big and sum(big) == 8
    assert all(r.payload == b"" for r in capped if r.oversized)
    assert [r.payload for r in capped if not r.oversized] == [r.payload for r, b in zip(full, big) if not b]
