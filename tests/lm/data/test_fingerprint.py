"""Fingerprints come from a stage's declaration only: config, code version, upstream stages,
and the files (by content) and environment it declares (issue #17, item 5)."""

import pyarrow as pa
import pytest

from lm.data.manifest import Manifest
from lm.data.shards import Stage, fingerprint

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def _commit(stage: Stage) -> Manifest:
    with stage.open_shard(0, schema=SCHEMA) as w:
        w.count_in()
        w.write({"id": "1", "text": "t"})
    return Manifest.read(stage.commit(num_shards=1))


def test_stages_that_declare_nothing_keep_their_fingerprints(tmp_path):
    # values computed by the code before declared inputs existed (commit 3480041)
    st = Stage(
        tmp_path, "extract", version="1", config={"min_len": 3, "langs": ["en", "de"]}, sources=["https://x/a.warc.gz"]
    )
    assert st.fingerprint == "7da54c459c112c12"
    assert (
        fingerprint("langid", "1", {"languages": ["en"], "min_score": 0.5}, ["0123456789abcdef"]) == "07b20ddcb2482f2f"
    )
    assert "declared" not in _commit(st).raw


def test_a_declared_file_enters_the_fingerprint_by_content(tmp_path):
    a, b, a_copy = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "elsewhere" / "a.bin"
    a.write_bytes(b"model A")
    b.write_bytes(b"model B")
    a_copy.parent.mkdir()
    a_copy.write_bytes(b"model A")
    plain = Stage(tmp_path, "s", version="1", config={})
    with_a = Stage(tmp_path, "s", version="1", config={}, files={"model": a})
    assert with_a.fingerprint != plain.fingerprint
    assert with_a.fingerprint != Stage(tmp_path, "s", version="1", config={}, files={"model": b}).fingerprint
    assert with_a.fingerprint == Stage(tmp_path, "s", version="1", config={}, files={"model": a_copy}).fingerprint
    m = _commit(with_a)
    assert m.declared == {
        "files": {
            "model": {"path": str(a), "sha256": "7c4a7a803380c808c34920b89750bf6c5b04b3cff7806a231d39e3fda119103f"}
        }
    }
    a.write_bytes(b"model A, retrained")  # same path, new content: a new directory
    assert Stage(tmp_path, "s", version="1", config={}, files={"model": a}).fingerprint != with_a.fingerprint
    with pytest.raises(FileNotFoundError, match="declared input file"):
        Stage(tmp_path, "s", version="1", config={}, files={"model": tmp_path / "missing.bin"})


def test_a_declared_environment_variable_enters_the_fingerprint(tmp_path, monkeypatch):
    monkeypatch.delenv("LMPIPE_TEST_KNOB", raising=False)
    unset = Stage(tmp_path, "s", version="1", config={}, env=["LMPIPE_TEST_KNOB"])
    monkeypatch.setenv("LMPIPE_TEST_KNOB", "2")
    two = Stage(tmp_path, "s", version="1", config={}, env=["LMPIPE_TEST_KNOB"])
    assert len({unset.fingerprint, two.fingerprint, Stage(tmp_path, "s", version="1", config={}).fingerprint}) == 3
    assert _commit(two).declared == {"env": {"LMPIPE_TEST_KNOB": "2"}}


def test_the_filters_stage_fingerprints_the_langid_model_file(tmp_path, monkeypatch):
    from lm.data.filters.stage import filter_stage, plan_filters

    upstream = str(_commit(Stage(tmp_path, "extract", version="1", config={})).path)
    only_langid = {
        "langid": {"languages": []},
        "pii": {"enabled": False},
        "rules": {"enabled": False},
        "quality": {"enabled": False},
        "harmful": {"enabled": False},
    }
    fps = []
    for content in (b"lid model one", b"lid model two"):
        model = tmp_path / f"lid-{len(fps)}.ftz"
        model.write_bytes(content)
        monkeypatch.setenv("LMPIPE_LID_MODEL", str(model))
        fps.append(filter_stage(str(tmp_path), plan_filters(only_langid), upstream).fingerprint)
    assert fps[0] != fps[1]  # another model file (same settings): another directory
    assert filter_stage(str(tmp_path), plan_filters(only_langid), upstream).fingerprint == fps[1]
