"""The data flow on the real Common Crawl fixtures, under a temporary Prefect server."""

import asyncio
import gzip
import zlib

import pyarrow.parquet as pq
import pytest

from flows.data import DataConfig, data_flow
from lm.data.shards import accounted, read_manifest, read_stage_table

CC = "commoncrawl"


def independent_count(path) -> int:
    """Records in a per-record gzip WARC, counted without our reader: complete gzip members,
    plus one for a trailing incomplete member (a truncated record)."""
    data, pos, n = path.read_bytes(), 0, 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        n += 1
        if not d.eof:
            break
        pos = len(data) - len(d.unused_data)
    return n


def extract_only(cfg: dict) -> dict:
    """These tests are about the extract stage: stop there once later stages join the flow."""
    return {**cfg, "filters": None} if "filters" in DataConfig.model_fields else cfg


def run(tmp_path, sources, **kw):
    cfg = DataConfig(
        **extract_only({"sources": [str(s) for s in sources], "root": str(tmp_path / "out"), "max_workers": 2, **kw})
    )
    return cfg, data_flow(config=cfg)


def task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def _read():
        async with get_client() as client:
            return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

    return asyncio.run(_read())


def test_every_record_accounted_for(prefect_harness, reference, tmp_path):
    names = ["warcfile.warc.gz", "clueweb-quirk.warc.gz", "clipped.warc.gz", "whirlwind.warc.wet.gz"]
    paths = [reference / CC / n for n in names]
    _, out = run(tmp_path, paths)
    m = read_manifest(out["extract"])
    c = m["counts"]
    assert c["in"] == sum(independent_count(p) for p in paths) == 50 + 30 + 1 + 2
    assert accounted(m)
    # warcfile: 16 responses (some not HTML / not 200); clueweb: 29 responses; WET: 1 conversion
    assert c["failed"] == {"truncated_gzip": 1}
    assert c["rejected"]["record_type_request"] == 17
    assert c["rejected"]["record_type_metadata"] == 16
    assert c["rejected"]["record_type_warcinfo"] == 3
    assert c["kept"] == 16 + 29 + 1 - sum(v for k, v in c["rejected"].items() if not k.startswith("record_type_"))
    table = read_stage_table(out["extract"])
    assert table.num_rows == c["kept"]
    for col in ("id", "url", "source", "text"):
        assert str(table.schema.field(col).type) == "string"
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    assert all(t.strip() for t in table.column("text").to_pylist())
    rejects = read_stage_table(out["extract"], kind="rejects")
    assert rejects.num_rows == sum(c["rejected"].values())
    assert m["failed_ids"][0]["kind"] == "truncated_gzip"


def test_rerun_does_no_work(prefect_harness, reference, tmp_path):
    paths = [reference / CC / "whirlwind.warc.gz", reference / CC / "warcfile.warc.gz"]
    cfg, out = run(tmp_path, paths)
    d = read_manifest(out["extract"])["_path"].rsplit("/", 1)[0]
    from pathlib import Path

    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(d).iterdir()}
    state = data_flow(config=cfg, return_state=True)
    assert state.result() == out
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(d).iterdir()}
    assert after == before
    names = [t.name for t in task_runs(state.state_details.flow_run_id)]
    assert not [n for n in names if n.startswith(("extract-", "commit-"))], names


def test_config_change_makes_a_new_stage(prefect_harness, reference, tmp_path):
    paths = [reference / CC / "warcfile.warc.gz"]
    _, a = run(tmp_path, paths)
    _, b = run(tmp_path, paths, extract={"max_payload_bytes": 20_000})
    assert a["extract"] != b["extract"]
    ca, cb = read_manifest(a["extract"])["counts"], read_manifest(b["extract"])["counts"]
    big = read_stage_table(a["extract"]).column("num_bytes").to_pylist()
    assert cb["rejected"]["over_size_cap"] == sum(n > 20_000 for n in big)
    assert cb["kept"] == ca["kept"] - cb["rejected"]["over_size_cap"]
    assert accounted(read_manifest(b["extract"]))


def test_slices_give_the_same_documents(prefect_harness, reference, tmp_path):
    paths = [reference / CC / "warcfile.warc.gz", reference / CC / "clueweb-quirk.warc.gz"]
    _, whole = run(tmp_path, paths)
    _, sliced = run(tmp_path, paths, extract={"slice_bytes": 40_000})
    m = read_manifest(sliced["extract"])
    assert len(m["shards"]) == 4 + 7  # ceil(135896/40000) + ceil(260849/40000)
    assert read_stage_table(sliced["extract"]).to_pylist() == read_stage_table(whole["extract"]).to_pylist()


def test_missing_path_fails_before_work(prefect_harness, reference, tmp_path):
    cfg = DataConfig(
        **extract_only(
            {
                "sources": [str(reference / CC / "whirlwind.warc.gz"), str(tmp_path / "nope.warc.gz")],
                "root": str(tmp_path / "out"),
            }
        )
    )
    with pytest.raises(FileNotFoundError, match="nope.warc.gz"):
        data_flow(config=cfg)
    assert not (tmp_path / "out").exists()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="sources"):
        DataConfig(sources=[])
    with pytest.raises(ValueError, match="max_payload_bytes"):
        DataConfig(sources=["x"], extract={"max_payload_bytes": 0})
    with pytest.raises(ValueError, match="max_payload_byte\\b"):  # a misspelt key is refused, not ignored
        DataConfig(sources=["x"], extract={"max_payload_byte": 10})
    with pytest.raises(ValueError, match="slice_bytes=1 would plan one task per 1 bytes"):  # not 194k tasks for 194 KB
        DataConfig(sources=["x"], extract={"slice_bytes": 1})


def test_root_inside_a_source_is_refused(tmp_path, monkeypatch):
    """Each run would read the previous run's outputs as input and never find itself done."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"root 'outputs' is inside source '\.'"):
        DataConfig(sources=["."], root="outputs")
    (tmp_path / "crawl").mkdir()
    with pytest.raises(ValueError, match=r"root 'crawl/out' is inside source 'crawl/'"):
        DataConfig(sources=["crawl/"], root="crawl/out")
    DataConfig(sources=["crawl"], root="outputs")


def _warc_record(rtype: str, url: str, ctype: str, payload: bytes) -> bytes:
    block = b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype.encode() + b"\r\n\r\n" + payload
    head = (
        f"WARC/1.0\r\nWARC-Type: {rtype}\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"WARC-Record-ID: <urn:uuid:{abs(hash(url))}>\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(block)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + block + b"\r\n\r\n")


def test_bad_inputs_are_counted_not_fatal(prefect_harness, reference, tmp_path, fault_server):
    empty = tmp_path / "empty.warc.gz"
    empty.write_bytes(b"")
    notwarc = tmp_path / "notes.warc"
    notwarc.write_text("this is not an archive\n")
    moby = (reference / "assignment4-data" / "fixtures" / "moby.html").read_bytes()
    mixed = tmp_path / "mixed.warc.gz"
    mixed.write_bytes(
        _warc_record("response", "http://a/ok", "text/html", moby)
        + _warc_record("response", "http://a/png", "text/html", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
        + _warc_record("response", "http://a/big", "text/html", moby * 100)
        + _warc_record("response", "http://a/img", "image/jpeg", b"\xff\xd8\xff" + bytes(100))
    )
    missing_url = fault_server.url + "/gone.warc.gz"
    flaky = fault_server.add(
        "/flaky.warc.gz", (reference / CC / "whirlwind.warc.gz").read_bytes(), faults=["503", "reset:9000"]
    )
    _, out = run(
        tmp_path,
        [empty, notwarc, mixed, reference / CC / "clipped.warc.gz", missing_url, flaky],
        extract={"max_payload_bytes": 100_000},
        http={"backoff_s": 0.01, "retries": 3},
    )
    m = read_manifest(out["extract"])
    c = m["counts"]
    assert accounted(m)
    assert c["failed"] == {"not_warc": 1, "undecodable": 1, "truncated_gzip": 1, "source_not_found": 1}
    assert c["rejected"]["over_size_cap"] == 1 and c["rejected"]["non_html"] == 1
    assert c["in"] == 0 + 1 + 4 + 1 + 1 + 4
    urls = read_stage_table(out["extract"]).column("url").to_pylist()
    assert urls == ["http://a/ok", "https://an.wikipedia.org/wiki/Escopete"]
    assert {"id": missing_url, "kind": "source_not_found"} in m["failed_ids"]
    # the flaky URL was retried (503) and resumed (Range) rather than restarted
    assert [r for p, r in fault_server.log if p == "/flaky.warc.gz"] == [None, None, "bytes=9000-"]
    shard0 = pq.read_table(read_manifest(out["extract"])["_path"].rsplit("/", 1)[0] + "/part-00000.parquet")
    assert shard0.num_rows == 0  # the empty file: an empty shard, the stage still finishes


def test_plan_slices_only_per_record_gzip(reference, tmp_path):
    from lm.data.ingest import plan_shards

    w = reference / CC / "warcfile.warc.gz"
    one = tmp_path / "one.warc.gz"  # the same records in one gzip stream: cannot be sliced
    one.write_bytes(gzip.compress(gzip.decompress(w.read_bytes())))
    plain = tmp_path / "plain.warc"
    plain.write_bytes(gzip.decompress(w.read_bytes()))
    shards = plan_shards([str(w), str(one), str(plain)], 40_000)
    assert [(s["location"], s["start"], s["end"]) for s in shards] == [
        (str(w), 0, 40_000),
        (str(w), 40_000, 80_000),
        (str(w), 80_000, 120_000),
        (str(w), 120_000, 135_896),
        (str(one), 0, None),
        (str(plain), 0, None),
    ]


def test_demo_config_is_valid():
    from pathlib import Path

    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "data-demo.yaml").read_text())
    cfg = DataConfig.model_validate(raw)
    assert cfg.sources == ["~/.cache/lmpipe/pywb-warcs"] and cfg.max_workers == 2


def test_index_source_in_the_flow(prefect_harness, reference, tmp_path):
    w = reference / CC / "warcfile.warc.gz"
    index = tmp_path / "hits.jsonl"
    rows = [(940, 10905), (12685, 18808), (11845, 420), (5, 100)]  # two pages, a metadata record, a bad offset
    index.write_text("".join(f'{{"filename": "{w}", "offset": {o}, "length": {n}}}\n' for o, n in rows))
    _, out = run(tmp_path, [f"index:{index}"], http={"allow_local_index_paths": True})  # the index names local files
    m = read_manifest(out["extract"])
    assert m["counts"]["in"] == 4 and accounted(m)
    assert m["counts"]["rejected"] == {"record_type_metadata": 1} and m["counts"]["failed"] == {"not_warc": 1}
    assert read_stage_table(out["extract"]).column("source").to_pylist() == [f"{w}:940", f"{w}:12685"]
