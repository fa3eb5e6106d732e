import json
import os

import pyarrow as pa
import pytest

from lm.data.shards import (
    ShardCorruptError,
    Stage,
    accounted,
    describe,
    read_manifest,
    read_shard,
    read_stage_table,
    validate_name,
)

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def _write(stage, index, rows, reject_every=0):
    with stage.open_shard(index, schema=SCHEMA, source=f"src-{index}") as w:
        for j, row in enumerate(rows):
            w.count_in()
            if reject_every and j % reject_every == 0:
                w.reject(row, "too_short")
            else:
                w.write(row)


def test_write_commit_read_roundtrip(tmp_path):
    stage = Stage(tmp_path, "extract", version="1", config={"min_len": 3}, sources=["a.warc"])
    rows = [{"id": str(i), "text": f"doc {i}"} for i in range(10)]
    _write(stage, 0, rows, reject_every=3)
    _write(stage, 1, rows[:2])
    with stage.open_shard(2, schema=SCHEMA) as w:
        w.count_in(2)
        w.fail("decode_error", "rec-9")
        w.fail("decode_error")
    path = stage.commit(num_shards=3)
    m = read_manifest(path)
    assert m["counts"] == {"in": 14, "kept": 8, "rejected": {"too_short": 4}, "failed": {"decode_error": 2}}
    assert accounted(m)
    assert [s["rows"] for s in m["shards"]] == [6, 2, 0]
    assert m["failed_ids"] == [{"id": "rec-9", "kind": "decode_error"}]
    assert read_stage_table(m).num_rows == 8
    rejects = read_stage_table(m, kind="rejects").to_pylist()
    assert {r["reason"] for r in rejects} == {"too_short"} and len(rejects) == 4
    assert m["schema"] == {"id": "string", "text": "string"}
    assert stage.is_complete()


def test_fingerprint_depends_on_config_version_and_inputs(tmp_path):
    a = Stage(tmp_path, "s", version="1", config={"x": 1})
    assert a.fingerprint == Stage(tmp_path, "s", version="1", config={"x": 1}).fingerprint
    assert a.fingerprint != Stage(tmp_path, "s", version="2", config={"x": 1}).fingerprint
    assert a.fingerprint != Stage(tmp_path, "s", version="1", config={"x": 2}).fingerprint
    with a.open_shard(0, schema=SCHEMA) as w:
        w.count_in()
        w.write({"id": "1", "text": "t"})
    up = a.commit()
    b = Stage(tmp_path, "t", version="1", config={}, inputs=[up])
    assert b.inputs[0]["fingerprint"] == a.fingerprint
    assert b.fingerprint != Stage(tmp_path, "t", version="1", config={}).fingerprint


def test_failed_shard_leaves_nothing_visible(tmp_path):
    stage = Stage(tmp_path, "s", version="1", config={})
    with pytest.raises(RuntimeError, match="boom"):
        with stage.open_shard(0, schema=SCHEMA) as w:
            w.count_in()
            w.write({"id": "1", "text": "t"})
            raise RuntimeError("boom")
    assert not stage.shard_done(0)
    assert sorted(os.listdir(stage.path)) == []
    with pytest.raises(RuntimeError, match=r"shards \[0\] not finished"):
        stage.commit(num_shards=1)


def test_stale_temporaries_of_a_killed_run_are_cleared(tmp_path):
    stage = Stage(tmp_path, "s", version="1", config={})
    stage.path.mkdir(parents=True)
    stale = stage.path / ".part-00000.parquet.4242.tmp"
    stale.write_bytes(b"half a shard")
    _write(stage, 0, [{"id": "1", "text": "t"}])
    assert not stale.exists()
    assert stage.shard_done(0)


def test_corruption_is_detected(tmp_path):
    stage = Stage(tmp_path, "s", version="1", config={})
    _write(stage, 0, [{"id": str(i), "text": "x" * 50} for i in range(100)])
    m = read_manifest(stage.commit())
    shard = stage.path / m["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match="checksum"):
        read_shard(shard, m["shards"][0]["sha256"])
    # a shard whose size changed is no longer "done": a rerun recomputes it
    shard.write_bytes(bytes(data[:-10]))
    assert not stage.shard_done(0)
    # a tampered manifest is refused and the stage counts as incomplete
    body = json.loads(stage.manifest_path.read_text())
    body["counts"]["kept"] += 1
    stage.manifest_path.write_text(json.dumps(body))
    with pytest.raises(ShardCorruptError, match="checksum"):
        read_manifest(stage.manifest_path)
    assert not stage.is_complete()
    stage.manifest_path.write_text("{not json")
    with pytest.raises(ShardCorruptError, match="not valid JSON"):
        read_manifest(stage.path)


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "UPPER", ".hidden", "x" * 65])
def test_stage_names_cannot_escape_the_root(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid stage name"):
        validate_name(bad)
    with pytest.raises(ValueError):
        Stage(tmp_path, bad, version="1", config={})


def test_describe_shows_counts_and_samples(tmp_path):
    stage = Stage(tmp_path, "extract", version="1", config={"k": "v"})
    _write(stage, 0, [{"id": "a", "text": "hello world"}], reject_every=0)
    stage.commit()
    out = describe(stage.path)
    assert "stage       extract" in out
    assert "in 1  kept 1" in out
    assert '"hello world"' in out


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has not finished"):
        read_manifest(tmp_path)
