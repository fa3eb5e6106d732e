"""The stage contract on fsspec roots: ``memory://`` (in process) and ``s3://`` (moto's server
mode on 127.0.0.1: a real S3 API over HTTP). Same bytes as a local root, same guarantees."""

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from moto_s3 import BUCKET, FAKE_SECRET, list_objects, moto_s3

from lm.data.shards import (
    ShardCorruptError,
    Stage,
    atomic_write_json,
    describe,
    file_sha256,
    iter_rows,
    read_manifest,
    read_shard,
    read_stage_table,
    shard_paths,
)
from lm.data.storage import RemotePath, as_path, check_root, local_copy, redact

REPO = Path(__file__).resolve().parents[3]
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def _write_stage(root, num_shards: int = 3) -> Stage:
    st = Stage(root, "demo", version="1", config={"k": 1})
    for i in range(num_shards):
        with st.open_shard(i, schema=SCHEMA, source=f"src-{i}") as w:
            for j in range(50):
                w.count_in()
                row = {"id": f"{i}-{j}", "text": f"document {i} {j} " * (j % 7)}
                w.reject(row, "empty") if j % 10 == 0 else w.write(row)
    st.commit(num_shards=num_shards)
    return st


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as client:
        yield client


@pytest.fixture(params=["memory", "s3"])
def root(request):
    run = uuid.uuid4().hex[:8]
    if request.param == "memory":
        return f"memory://lmpipe-tests/{run}"
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/{run}"


def test_remote_stage_matches_a_local_stage_byte_for_byte(root, tmp_path):
    local, remote = _write_stage(tmp_path), _write_stage(root)
    assert isinstance(remote.path, RemotePath) and str(remote.path) == f"{root}/demo/{local.fingerprint}"
    ml, mr = read_manifest(local.manifest_path), read_manifest(remote.manifest_path)
    assert mr["_path"] == f"{root}/demo/{local.fingerprint}/_manifest.json"
    for key in ("shards", "rejects", "counts", "schema", "fingerprint"):
        assert mr[key] == ml[key], key
    assert [p.read_bytes() for p in shard_paths(mr)] == [p.read_bytes() for p in shard_paths(ml)]
    assert read_stage_table(mr).equals(read_stage_table(ml)) and read_stage_table(mr).num_rows == 3 * 45
    assert list(iter_rows(str(remote.path), kind="rejects")) == list(iter_rows(str(local.path), kind="rejects"))
    assert [file_sha256(p) for p in shard_paths(mr)] == [s["sha256"] for s in ml["shards"]]
    assert "records     in 150  kept 135  rejected 15" in describe(str(remote.path))
    # a stage directory (not only its manifest) names the stage; no temporaries are left
    assert read_manifest(str(remote.path))["fingerprint"] == local.fingerprint
    names = sorted(p.name for p in remote.path.iterdir())
    assert names == sorted(p.name for p in local.path.iterdir())
    assert not [n for n in names if n.startswith(".")]


def test_rerun_skips_done_shards_and_a_complete_stage(root):
    st = _write_stage(root, num_shards=2)
    marker = st.marker_path(0)
    before = {p.name: p.stat().info for p in st.path.iterdir()}  # S3: ETag + LastModified; memory: created
    again = Stage(root, "demo", version="1", config={"k": 1})
    assert again.is_complete() and again.shard_done(0) and again.shard_done(1) and not again.shard_done(2)
    assert json.loads(marker.read_text())["kept"] == 45
    assert {p.name: p.stat().info for p in again.path.iterdir()} == before
    assert not Stage(root, "demo", version="1", config={"k": 2}).is_complete()  # another config: another dir


def test_corrupt_remote_shard_is_detected_on_read(root, tmp_path, monkeypatch):
    monkeypatch.setenv("LMPIPE_CACHE", str(tmp_path))
    st = _write_stage(root, num_shards=2)
    m = read_manifest(st.manifest_path)
    shard = st.path / m["shards"][1]["name"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the shard
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match=r"part-00001\.parquet does not match the checksum"):
        read_stage_table(m)
    with pytest.raises(ShardCorruptError):
        list(iter_rows(str(st.manifest_path)))
    assert read_shard(st.path / m["shards"][0]["name"], m["shards"][0]["sha256"]).num_rows == 45
    with pytest.raises(ShardCorruptError, match="checksum"):
        local_copy(shard, m["shards"][1]["sha256"])  # the cache refuses it too
    # a tampered manifest is not trusted: the stage counts as incomplete and is recomputed
    mp = st.manifest_path
    mp.write_bytes(mp.read_bytes().replace(b'"kept": 90', b'"kept": 91'))
    with pytest.raises(ShardCorruptError, match="does not match its checksum"):
        read_manifest(mp)
    assert not Stage(root, "demo", version="1", config={"k": 1}).is_complete()


def test_atomic_write_json_and_missing_files(root):
    p = as_path(root) / "x" / "obj.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [q.name for q in p.parent.iterdir()] == ["obj.json"]  # temporary key removed
    with pytest.raises(FileNotFoundError, match="no stage manifest"):
        read_manifest(f"{root}/nothing/here")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_shard(f"{root}/nothing/part-00000.parquet")


_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import pyarrow as pa
    from lm.data import storage
    from lm.data.shards import Stage
    root, when = sys.argv[1], sys.argv[2]
    st = Stage(root, "demo", version="1", config={"k": 1})
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if when == "before_copy":  # the shard's temporary key is uploaded; the copy never happens
        storage.filesystem("s3").copy = die
    with st.open_shard(0, schema=pa.schema([("id", pa.string())])) as w:
        for j in range(5000):
            w.count_in()
            w.write({"id": str(j)})
            if when == "mid_rows" and j == 3000:
                die()
""")


@pytest.mark.parametrize("when", ["mid_rows", "before_copy"])
def test_killed_writer_leaves_no_visible_partial_shard(s3, when):
    root = f"s3://{BUCKET}/killed-{when}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, root, when], env=env, cwd=REPO, timeout=120)
    assert proc.returncode == -9
    st = Stage(root, "demo", version="1", config={"k": 1})
    keys = {
        k: v for k, v in list_objects(s3, prefix=f"killed-{when}/").items() if not k.endswith("/.lmpipe-key")
    }  # the root's key
    visible = [k for k in keys if not k.rsplit("/", 1)[-1].startswith(".")]
    assert visible == [] and not st.shard_done(0) and not st.is_complete()
    if when == "before_copy":  # the hidden temporary key is there, and only it
        (key,) = keys
        assert key.rsplit("/", 1)[-1].startswith(".part-00000.parquet.") and key.endswith(".tmp")
    else:  # rows are buffered in a local scratch file: nothing reached the store
        assert keys == {}
    # the rerun clears the stale temporary and commits the whole shard
    with st.open_shard(0, schema=pa.schema([("id", pa.string())])) as w:
        for j in range(5000):
            w.count_in()
            w.write({"id": str(j)})
    st.commit(num_shards=1)
    names = sorted(k.rsplit("/", 1)[-1] for k in list_objects(s3, prefix=f"killed-{when}/"))
    assert names == [
        ".lmpipe-key",
        "_manifest.json",
        "part-00000.done.json",
        "part-00000.parquet",
    ]  # the root's signing key too
    assert read_stage_table(st.manifest_path).num_rows == 5000


def test_remote_token_shard_is_memory_mapped_from_the_sha256_cache(s3, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("LMPIPE_CACHE", str(tmp_path / "cache"))
    ids = np.arange(1000, dtype="<u2")
    p = as_path(f"s3://{BUCKET}/tokens/train-00000.bin")
    p.write_bytes(ids.tobytes())
    digest = file_sha256(p)
    local = local_copy(p, digest)
    assert local == tmp_path / "cache" / "artifacts" / digest[:2] / f"{digest}.bin"
    assert np.array_equal(np.memmap(local, dtype="<u2", mode="r"), ids)
    assert local_copy(p, digest) == local  # cached: no second download
    with pytest.raises(TypeError):
        np.memmap(p, dtype="<u2", mode="r")  # a URL never reaches a local-only API by accident


@pytest.mark.parametrize(
    "bad, message",
    [
        ("s4://bucket/x", r"unsupported scheme 's4'; use a local path or one of file://, memory://, s3://"),
        ("s3:///x", "names no bucket"),
        (f"s3://AKIAXX:{FAKE_SECRET}@bucket/x", r"root 's3://\*\*\*@bucket/x' embeds credentials"),
        ("s3://bucket/x?token=abc", "no query string"),
        ("", "blank"),
        ("gs://bucket/x", "install gcsfs"),  # a supported scheme whose package is not installed here
    ],
)
def test_bad_roots_fail_naming_the_value(bad, message):
    with pytest.raises(ValueError, match=message) as e:
        check_root(bad)
    assert FAKE_SECRET not in str(e.value) and "AKIAXX" not in str(e.value)
    if bad:  # (Stage("") is the current directory, as before)
        with pytest.raises(ValueError, match=message.split(";")[0].replace("root ", "")):
            Stage(bad, "demo", version="1", config={})


def test_local_paths_and_file_urls_stay_on_the_local_fast_path(tmp_path):
    assert as_path(str(tmp_path)) == tmp_path and as_path(f"file://{tmp_path}") == tmp_path
    assert isinstance(_write_stage(f"file://{tmp_path}").path, Path)
    assert redact("s3://k:s@b/p?x=1") == "s3://***@b/p?***" and check_root("s3://b/p/") == "s3://b/p"
