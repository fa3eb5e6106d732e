"""Bounded reads of hostile or broken remote sources (issue #17, items 10 and 13), against a
real HTTP server on 127.0.0.1 (tests/fault_http.py).

- Every HTTP Content-Encoding we decode (gzip, deflate, br) stops at the decoded-size cap: a
  few dozen bytes of brotli used to expand without limit (a 391-byte WARC reached 6.5 GB RSS).
- A server that drips the body a byte at a time cannot hold a run forever: the source's overall
  deadline (``http.deadline_s``) ends it, and what was not read is one failed record,
  ``source_deadline``, with a message naming the URL and the setting.
"""

from __future__ import annotations

import gzip
import time
import zlib

import brotli
import pytest
from fault_http import FaultServer  # tests/ is on sys.path (rootdir conftest)

from lm.data import warc
from lm.data.ingest import ExtractConfig, extract_documents
from lm.data.remote import HttpOptions
from lm.data.warc import iter_records


@pytest.fixture
def fault_server():
    s = FaultServer()
    yield s
    s.close()


CAP = 1 << 20  # the test's decoded-size cap (the shipped one is 64 MiB)
BOMB = 16 << 20  # what the bomb would decode to


def _encode(data: bytes, encoding: str) -> bytes:
    if encoding == "br":
        return brotli.compress(data, quality=5)
    if encoding == "gzip":
        return gzip.compress(data, mtime=0)
    return zlib.compress(data, 9)  # deflate (zlib-wrapped, as most servers send it)


def _warc(url: str, body: bytes, encoding: str, rid: int = 1) -> bytes:
    http = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: "
        + encoding.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    head = (
        f"WARC/1.1\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:00000000-0000-0000-0000-{rid:012d}>\r\n"
        f"WARC-Target-URI: {url}\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + http + b"\r\n\r\n", mtime=0)


@pytest.mark.parametrize("encoding", ["br", "gzip", "deflate"])
def test_every_content_encoding_is_capped(fault_server, monkeypatch, chaos_record, encoding):
    monkeypatch.setattr(warc, "MAX_DECODED", CAP)
    bomb = _encode(b"\0" * BOMB, encoding)
    url = fault_server.add(f"/bomb-{encoding}.warc.gz", _warc("http://bomb.example/", bomb, encoding))
    (rec,) = list(iter_records(url, http=HttpOptions(retries=0)))
    chaos_record(
        f"{encoding} compression bomb ({len(bomb)} bytes → {BOMB >> 20} MiB)",
        "WARC reader (HTTP)",
        1,
        int(len(rec.payload) <= CAP),
        note=f"decoded body stops at the cap ({len(rec.payload):,} bytes)",
    )
    assert 0 < len(rec.payload) <= CAP
    # a small body under the same encoding still decodes in full
    page = b"<html><body><p>" + b"hello world " * 200 + b"</p></body></html>"
    url = fault_server.add(
        f"/page-{encoding}.warc.gz", _warc("http://page.example/", _encode(page, encoding), encoding)
    )
    (rec,) = list(iter_records(url, http=HttpOptions(retries=0)))
    assert rec.payload == page


def test_a_dripping_server_is_cut_off_at_the_source_deadline(fault_server, chaos_record):
    pages = b"".join(_warc(f"http://drip.example/{i}", b"<p>page %d</p>" % i, "identity", i) for i in range(3))
    url = fault_server.add("/drip.warc.gz", pages, faults=["slow:1:0.05"])  # the whole file would take ~20 s
    opts = HttpOptions(retries=1, backoff_s=0.01, timeout_s=5, deadline_s=1.5)
    t0 = time.monotonic()
    outcomes = list(extract_documents(iter_records(url, http=opts), ExtractConfig()))
    elapsed = time.monotonic() - t0
    failed = [o for o in outcomes if o.status == "failed"]
    ok = elapsed < 6 and [o.why for o in failed] == ["source_deadline"]
    chaos_record(
        "server drips 1 byte / 50 ms",
        "WARC reader (HTTP)",
        1,
        int(ok),
        note=f"stopped after {elapsed:.1f} s (deadline 1.5 s); the rest counted failed: source_deadline",
    )
    assert elapsed < 6, elapsed
    assert [o.why for o in failed] == ["source_deadline"] and failed[0].row["source"].startswith(url)
    assert len(outcomes) < 3  # not every page arrived in time


def test_index_records_share_one_deadline(fault_server, tmp_path):
    members = [_warc(f"http://x.example/{i}", b"<p>%d</p>" % i, "identity", i) for i in range(4)]
    offsets = [(sum(len(m) for m in members[:i]), len(members[i])) for i in range(4)]
    fault_server.add("/crawl-data/drip.warc.gz", b"".join(members))
    fault_server.faults["/crawl-data/drip.warc.gz"] = ["slow:1:0.05"] * 4
    index = tmp_path / "hits.jsonl"
    index.write_text(
        "".join(f'{{"filename": "crawl-data/drip.warc.gz", "offset": {o}, "length": {n}}}\n' for o, n in offsets)
    )
    opts = HttpOptions(retries=0, timeout_s=5, deadline_s=1.0)
    t0 = time.monotonic()
    recs = list(iter_records(f"index:{index}", http=opts, base_url=fault_server.url + "/"))
    assert time.monotonic() - t0 < 6
    assert [r.error for r in recs] == ["source_deadline"] * 4  # every pointer accounted for
