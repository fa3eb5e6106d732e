import json
from pathlib import Path

from lm.data.ingest import ExtractConfig, plan_shards
from lm.data.remote import HttpOptions
from tasks.extract import commit_extract, extract_shard, extract_stage, plan_digest

CC = "commoncrawl"


def test_shard_task_writes_marker_and_skips_when_done(prefect_harness, reference, tmp_path):
    cfg = ExtractConfig()
    shards = plan_shards([str(reference / CC / "whirlwind.warc.gz")], cfg.slice_bytes)
    marker = extract_shard(str(tmp_path), cfg, plan_digest(shards), 0, shards[0])
    m = json.loads(Path(marker).read_text())
    assert (m["rows_in"], m["kept"], m["rejected"]) == (
        4,
        1,
        {"record_type_warcinfo": 1, "record_type_request": 1, "record_type_metadata": 1},
    )
    mtime = (tmp_path / "extract").stat().st_mtime_ns
    before = Path(marker).read_text()
    assert extract_shard(str(tmp_path), cfg, plan_digest(shards), 0, shards[0]) == marker
    assert Path(marker).read_text() == before and (tmp_path / "extract").stat().st_mtime_ns == mtime
    manifest = commit_extract(str(tmp_path), cfg, shards)
    assert manifest == str(extract_stage(str(tmp_path), cfg, plan_digest(shards)).manifest_path)


def test_unreachable_source_is_retried_then_counted(prefect_harness, tmp_path, fault_server):
    url = fault_server.add("/down.warc.gz", b"", faults=["503"] * 100)
    cfg = ExtractConfig()
    shards = plan_shards([url], 0)
    fast = extract_shard.with_options(retry_delay_seconds=0)
    marker = fast(str(tmp_path), cfg, plan_digest(shards), 0, shards[0], HttpOptions(retries=1, backoff_s=0.01))
    m = json.loads(Path(marker).read_text())
    assert m["failed"] == {"source_error": 1} and m["rows_in"] == 1
    assert len(fault_server.log) == 3 * 2  # 3 task attempts x (1 + 1 HTTP retries)


def test_long_input_gets_a_progress_artifact(prefect_harness, reference, tmp_path, monkeypatch):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterTaskRunId

    import tasks.extract as te

    monkeypatch.setattr(te, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(te, "PROGRESS_EVERY_S", 0.0)
    cfg = ExtractConfig()
    shards = plan_shards([str(reference / CC / "clueweb-quirk.warc.gz")], 0)
    state = extract_shard(str(tmp_path), cfg, plan_digest(shards), 0, shards[0], return_state=True)
    task_run_id = state.state_details.task_run_id

    async def _read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[task_run_id]))
            )

    (art,) = [a for a in asyncio.run(_read()) if a.type == "progress"]
    assert art.data == 100.0 and "clueweb-quirk" in art.description
