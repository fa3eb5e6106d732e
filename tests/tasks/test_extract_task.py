import json

from lm.data.ingest import ExtractConfig, plan_shards
from lm.data.remote import HttpOptions
from tasks.extract import commit_extract, extract_shard, extract_stage

CC = "commoncrawl"


def test_shard_task_writes_marker_and_skips_when_done(prefect_harness, reference, tmp_path):
    cfg = ExtractConfig()
    shards = plan_shards([str(reference / CC / "whirlwind.warc.gz")], cfg.slice_bytes)
    marker = extract_shard(str(tmp_path), cfg, shards, 0)
    m = json.loads(open(marker).read())
    assert (m["rows_in"], m["kept"], m["rejected"]) == (4, 1, {"record_type_warcinfo": 1, "record_type_request": 1, "record_type_metadata": 1})
    mtime = (tmp_path / "extract").stat().st_mtime_ns
    before = open(marker).read()
    assert extract_shard(str(tmp_path), cfg, shards, 0) == marker
    assert open(marker).read() == before and (tmp_path / "extract").stat().st_mtime_ns == mtime
    manifest = commit_extract(str(tmp_path), cfg, shards)
    assert manifest == str(extract_stage(str(tmp_path), cfg, shards).manifest_path)


def test_unreachable_source_is_retried_then_counted(prefect_harness, tmp_path, fault_server):
    url = fault_server.add("/down.warc.gz", b"", faults=["503"] * 100)
    cfg = ExtractConfig()
    shards = plan_shards([url], 0)
    fast = extract_shard.with_options(retry_delay_seconds=0)
    marker = fast(str(tmp_path), cfg, shards, 0, HttpOptions(retries=1, backoff_s=0.01))
    m = json.loads(open(marker).read())
    assert m["failed"] == {"source_error": 1} and m["rows_in"] == 1
    assert len(fault_server.log) == 3 * 2  # 3 task attempts x (1 + 1 HTTP retries)
