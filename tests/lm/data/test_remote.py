"""Remote reads against a local HTTP server with injected faults (see conftest.py)."""

import gzip

import pytest

from lm.data.remote import CCListing, HttpFile, HttpOptions, RemoteError, expand_sources
from lm.data.warc import iter_records

CC = "commoncrawl"
FAST = HttpOptions(retries=3, backoff_s=0.01, timeout_s=2.0)


def _wid(r) -> str:
    """The WARC-Record-ID (``r.id`` hashes the location: the same record read from disk and
    over HTTP has two ids)."""
    return r.headers.get("WARC-Record-ID")


def _local(path):
    return [(_wid(r), r.record_type, r.payload) for r in iter_records(str(path))]


def _remote(url, **kw):
    return [(_wid(r), r.record_type, r.payload) for r in iter_records(url, http=FAST, **kw)]


def test_plain_download(reference, fault_server):
    path = reference / CC / "warcfile.warc.gz"
    url = fault_server.add("/a/warcfile.warc.gz", path.read_bytes())
    recs = list(iter_records(url, http=FAST))
    assert [(_wid(r), r.record_type, r.payload) for r in recs] == _local(path)
    assert recs[2].source == f"{url}:940"


def test_404_names_the_url(fault_server):
    url = fault_server.url + "/missing.warc.gz"
    with pytest.raises(FileNotFoundError, match="missing.warc.gz.*404"):
        list(iter_records(url, http=FAST))
    assert len(fault_server.log) == 1  # not retried


def test_503_then_success_is_retried(reference, fault_server):
    path = reference / CC / "whirlwind.warc.gz"
    url = fault_server.add("/w.warc.gz", path.read_bytes(), faults=["503", "503"])
    assert _remote(url) == _local(path)
    assert len(fault_server.log) == 3


def test_503_forever_gives_up_naming_the_url(reference, fault_server):
    url = fault_server.add("/w.warc.gz", b"x", faults=["503"] * 10)
    with pytest.raises(RemoteError, match="w.warc.gz.*gave up after 4 attempts"):
        list(iter_records(url, http=FAST))


def test_reset_mid_body_resumes_with_range(reference, fault_server):
    path = reference / CC / "warcfile.warc.gz"
    data = path.read_bytes()
    url = fault_server.add("/r.warc.gz", data, faults=["reset:40000", "reset:30000"])
    assert _remote(url) == _local(path)
    # Three requests: the first broke at 40000 bytes, the second resumed from there and broke
    # 30000 bytes later, the third finished: never restarted from zero.
    assert fault_server.log == [("/r.warc.gz", None), ("/r.warc.gz", "bytes=40000-"), ("/r.warc.gz", "bytes=70000-")]


def test_timeout_is_retried(reference, fault_server):
    path = reference / CC / "whirlwind.warc.gz"
    url = fault_server.add("/t.warc.gz", path.read_bytes(), faults=["stall:1.5"])
    opts = HttpOptions(retries=2, backoff_s=0.01, timeout_s=0.5)
    assert [(_wid(r), r.payload) for r in iter_records(url, http=opts)] == [(i, p) for i, _, p in _local(path)]


def test_range_pointers_one_request_per_record(reference, fault_server):
    path = reference / CC / "warcfile.warc.gz"
    url = fault_server.add("/crawl-data/x/warcfile.warc.gz", path.read_bytes())
    local = {r.source.rsplit(":", 1)[1]: r for r in iter_records(str(path))}
    ptrs = [("crawl-data/x/warcfile.warc.gz", 940, 10905), ("crawl-data/x/warcfile.warc.gz", 12685, 18808)]
    from lm.data.warc import iter_pointers

    recs = list(iter_pointers(ptrs, http=FAST, base_url=fault_server.url + "/"))
    assert [r.payload for r in recs] == [local["940"].payload, local["12685"].payload]
    assert [r.source for r in recs] == [f"{url}:940", f"{url}:12685"]
    assert fault_server.log == [
        ("/crawl-data/x/warcfile.warc.gz", "bytes=940-11844"),
        ("/crawl-data/x/warcfile.warc.gz", "bytes=12685-31492"),
    ]


def test_connection_closed_mid_body_resumes_with_range(reference, fault_server):
    path = reference / CC / "clueweb-quirk.warc.gz"
    url = fault_server.add("/f.warc.gz", path.read_bytes(), faults=["close:12345"])
    assert _remote(url) == _local(path)
    assert fault_server.log == [("/f.warc.gz", None), ("/f.warc.gz", "bytes=12345-")]


def test_http_file_resume_counts(reference, fault_server):
    data = (reference / CC / "clueweb-quirk.warc.gz").read_bytes()
    url = fault_server.add("/c.warc.gz", data, faults=["reset:100000"])
    f = HttpFile(url, options=FAST)
    got = f.read()
    assert got == data and f.num_resumes == 1


def test_cc_listing_parses_real_listing(reference, fault_server):
    listing = (reference / CC / "CC-MAIN-2024-22.warc.paths.gz").read_bytes()
    fault_server.add("/crawl-data/CC-MAIN-2024-22/warc.paths.gz", listing)
    lines = gzip.decompress(listing).decode().split()
    got = CCListing("CC-MAIN-2024-22", "warc", 3, fault_server.url + "/").locations(FAST)
    assert got == [f"{fault_server.url}/{p}" for p in lines[:3]]
    spec = f"cc://CC-MAIN-2024-22?kind=warc&files=2&base={fault_server.url}/"
    assert expand_sources([spec], FAST) == got[:2]


def test_cc_listing_end_to_end(reference, fault_server):
    names = ["whirlwind.warc.wet.gz", "warcfile.warc.gz"]
    for n in names:
        fault_server.add(f"/crawl-data/CC-MAIN-2099-01/segments/1/wet/{n}", (reference / CC / n).read_bytes())
    listing = "".join(f"crawl-data/CC-MAIN-2099-01/segments/1/wet/{n}\n" for n in names)
    fault_server.add("/crawl-data/CC-MAIN-2099-01/wet.paths.gz", gzip.compress(listing.encode()))
    recs = list(iter_records(f"cc://CC-MAIN-2099-01?kind=wet&files=2&base={fault_server.url}/", http=FAST))
    assert len(recs) == 2 + 50
    assert recs[1].record_type == "conversion"


def test_cc_listing_rejects_bad_values():
    with pytest.raises(ValueError, match="CC-MAIN-YYYY-WW"):
        CCListing("2024-22")
    with pytest.raises(ValueError, match="kind"):
        CCListing("CC-MAIN-2024-22", kind="html")
    with pytest.raises(ValueError, match="unknown parameter"):
        CCListing.parse("cc://CC-MAIN-2024-22?segments=2")


def test_index_file_of_pointers(reference, fault_server, tmp_path):
    """CC index rows (JSON lines and CDXJ) fetched with one Range request each; a pointer into
    a missing file is one failed record, the others are still read."""
    path = reference / CC / "warcfile.warc.gz"
    fault_server.add("/crawl-data/x/warcfile.warc.gz", path.read_bytes())
    index = tmp_path / "hits.cdxj"
    index.write_text(
        '{"url": "http://003338.cn/l41/481397.html", "filename": '
        '"crawl-data/x/warcfile.warc.gz", "offset": "940", "length": "10905"}\n'
        'ru,01spb)/company 20200804 {"filename": '
        '"crawl-data/x/warcfile.warc.gz", "offset": "12685", "length": "18808"}\n'
        '{"filename": "crawl-data/x/gone.warc.gz", "offset": "0", "length": "100"}\n'
    )
    recs = list(iter_records(f"index:{index}", http=FAST, base_url=fault_server.url + "/"))
    assert [(r.url, r.error) for r in recs] == [
        ("http://003338.cn/l41/481397.html", None),
        ("http://01spb.ru/company/", None),
        ("", "source_not_found"),
    ]
    assert recs[2].source == fault_server.url + "/crawl-data/x/gone.warc.gz:0"
    with pytest.raises(FileNotFoundError, match="nope.cdxj"):
        expand_sources([f"index:{tmp_path / 'nope.cdxj'}"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"filename": "x"}\n')
    with pytest.raises(ValueError, match="line 1"):
        list(iter_records(f"index:{bad}"))
