"""Markers and manifests cannot leave their stage, and cannot be forged without the root's key.

Each test plants what a hostile user who can write the artifact root would plant (issue #17,
item 2) and checks that lmpipe neither deletes nor reads anything outside the root, nor trusts
a file it did not sign.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm.data.shards import (
    ShardCorruptError,
    Stage,
    describe,
    file_sha256,
    read_manifest,
    read_stage_table,
    write_marker,
)

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def _write(stage: Stage, index: int, rows: list[dict]) -> None:
    with stage.open_shard(index, schema=SCHEMA, source=f"src-{index}") as w:
        for row in rows:
            w.count_in()
            w.write(row)


def _outside(tmp_path):
    """A Parquet file of secrets and a file to delete, both outside the root."""
    secret = tmp_path / "outside.parquet"
    pq.write_table(pa.table({"id": ["s"], "text": ["SECRET ROW"]}), secret)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    return secret, victim


def _marker(index: int, secret, victim) -> dict:
    """A marker naming files outside the stage: the secret as its shard, the victim as its (empty) rejects."""
    return {
        "index": index,
        "source": "planted",
        "shard": {
            "name": f"../../../{secret.name}",
            "rows": 1,
            "bytes": secret.stat().st_size,
            "sha256": file_sha256(secret),
        },
        "rejects": {"name": f"../../../{victim.name}", "rows": 0, "bytes": 0, "sha256": None},
        "rows_in": 1,
        "kept": 1,
        "rejected": {},
        "failed": {},
        "failed_ids": [],
        "extra": {},
        "seconds": 0.0,
        "finished_at": "2020-01-01T00:00:00+00:00",
    }


def _self_checksummed(body: dict, key: str) -> str:
    """What a writer without the key can do: a body with a valid plain sha256 of itself."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return json.dumps({**body, key: hashlib.sha256(canonical.encode()).hexdigest()})


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed-by-a-buggy-writer"])
def test_planted_marker_naming_parent_paths_neither_deletes_nor_reads_outside(tmp_path, signed):
    secret, victim = _outside(tmp_path)
    root = tmp_path / "root"
    st = Stage(root, "extract", version="1", config={})
    _write(st, 0, [{"id": "a", "text": "mine"}])
    planted = st.marker_path(1)
    if signed:  # even a marker carrying a valid signature may only name files inside its stage
        write_marker(planted, _marker(1, secret, victim))
    else:
        planted.write_text(_self_checksummed(_marker(1, secret, victim), "marker_sha256"))

    assert not st.shard_done(1)  # never trusted: the shard is recomputed
    with pytest.raises(ShardCorruptError, match="not a plain name|not trusted"):
        st.commit()  # commit reads every marker of the stage
    assert victim.read_text() == "keep me"
    assert not st.manifest_path.exists()
    # the run recomputes shard 1 (replacing the planted marker) and commits its own output only
    _write(st, 1, [{"id": "b", "text": "also mine"}])
    m = read_manifest(st.commit(num_shards=2))
    assert read_stage_table(m).column("text").to_pylist() == ["mine", "also mine"]
    assert victim.read_text() == "keep me"


def test_forged_marker_with_a_valid_plain_sha256_is_not_trusted(tmp_path):
    root = tmp_path / "root"
    st = Stage(root, "extract", version="1", config={})
    _write(st, 0, [{"id": "a", "text": "genuine"}])
    # Replace the shard with the attacker's rows and forge a marker that matches it exactly,
    # checksum included: everything but the root's key.
    shard = st.path / "part-00000.parquet"
    pq.write_table(pa.table({"id": ["x"], "text": ["FORGED ROW"]}), shard)
    marker = json.loads(st.marker_path(0).read_text())
    body = {k: v for k, v in marker.items() if not k.startswith("marker_")}
    body["shard"] = {**body["shard"], "bytes": shard.stat().st_size, "sha256": file_sha256(shard)}
    st.marker_path(0).write_text(_self_checksummed(body, "marker_sha256"))

    assert not st.shard_done(0)
    _write(st, 0, [{"id": "a", "text": "genuine"}])  # what a rerun does for a shard not done
    m = read_manifest(st.commit(num_shards=1))
    assert read_stage_table(m).column("text").to_pylist() == ["genuine"]


def test_forged_manifest_with_a_valid_plain_sha256_is_not_trusted(tmp_path):
    root = tmp_path / "root"
    st = Stage(root, "extract", version="1", config={})
    _write(st, 0, [{"id": "a", "text": "genuine"}])
    st.commit(num_shards=1)
    shard = st.path / "part-00000.parquet"
    pq.write_table(pa.table({"id": ["x"], "text": ["FORGED ROW"]}), shard)
    body = {k: v for k, v in json.loads(st.manifest_path.read_text()).items() if not k.startswith("manifest_")}
    body["shards"][0] |= {"bytes": shard.stat().st_size, "sha256": file_sha256(shard)}
    st.manifest_path.write_text(_self_checksummed(body, "manifest_sha256"))

    assert not st.is_complete()
    with pytest.raises(ShardCorruptError, match="not trusted"):
        read_manifest(st.manifest_path)


def test_a_genuine_marker_copied_to_another_shard_is_not_trusted(tmp_path):
    st = Stage(tmp_path / "root", "extract", version="1", config={})
    _write(st, 0, [{"id": "a", "text": "zero"}])
    st.marker_path(1).write_bytes(st.marker_path(0).read_bytes())  # signed, but for shard 0's place
    assert st.shard_done(0) and not st.shard_done(1)


def test_a_key_others_can_read_is_refused(tmp_path):
    st = Stage(tmp_path / "root", "extract", version="1", config={})
    _write(st, 0, [{"id": "a", "text": "zero"}])
    key = tmp_path / "root" / ".lmpipe-key"
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        st.shard_done(0)


def _planted_manifest(tmp_path, name: str):
    """A stage whose manifest (signed with the root's key, as a buggy writer would) lists ``name``."""
    secret, _ = _outside(tmp_path)
    st = Stage(tmp_path / "root", "extract", version="1", config={})
    _write(st, 0, [{"id": "a", "text": "mine"}])
    st.commit(num_shards=1)
    body = {k: v for k, v in json.loads(st.manifest_path.read_text()).items() if not k.startswith("manifest_")}
    body["shards"][0] |= {"name": name, "bytes": secret.stat().st_size, "sha256": file_sha256(secret)}
    return st, body


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_inspect_refuses_a_manifest_naming_files_outside_its_stage(tmp_path, signed):
    from lm.data.stage_io import write_signed_json

    st, body = _planted_manifest(tmp_path, "../../../outside.parquet")
    if signed:
        write_signed_json(st.manifest_path, body, "manifest")
    else:
        st.manifest_path.write_text(_self_checksummed(body, "manifest_sha256"))
    with pytest.raises(ShardCorruptError, match="not a plain name|not trusted"):
        describe(st.path)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "inspect", str(st.path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "SECRET ROW" not in proc.stdout + proc.stderr
    assert "not a plain name" in proc.stderr or "not trusted" in proc.stderr


def test_a_writer_cannot_list_a_file_outside_its_stage(tmp_path):
    st = Stage(tmp_path / "root", "extract", version="1", config={})
    with pytest.raises(ShardCorruptError, match="not a plain name"):
        st.write_manifest(
            shards=[{"name": "/etc/passwd", "bytes": 1, "sha256": "0" * 64}],
            counts={"in": 0, "kept": 0, "rejected": {}, "failed": {}},
        )
    with pytest.raises(ShardCorruptError, match="not a plain name"):
        st.write_manifest(
            shards=[],
            counts={"in": 0, "kept": 0, "rejected": {}, "failed": {}},
            extra={"files_sha256": {"checkpoint/../../x": "0" * 64}},
        )
