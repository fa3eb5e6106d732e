"""Stage tasks on one shard, called directly: a bad record never kills a shard."""

import pyarrow as pa
import pytest

import lm.data.filters as filters_mod
from lm.data.shards import Stage, accounted, iter_rows, read_manifest
from tasks.filters import filter_shard, filter_stage

SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("source", pa.string()), ("text", pa.string())])
RULES = {"gopher": True, "gopher_thresholds": {}, "c4": False, "c4_options": {}, "bad_words": False, "bad_words_language": "en"}


def _input(root, reference, texts):
    st = Stage(root, "extract", version="test", config={})
    with st.open_shard(0, schema=SCHEMA) as w:
        for i, t in enumerate(texts):
            w.count_in()
            w.write({"id": f"d{i}", "url": f"u{i}", "source": "test", "text": t})
    return str(st.commit(num_shards=1))


def test_failing_record_is_counted_not_fatal(tmp_path, reference, monkeypatch):
    good = (reference / "assignment4-data/fixtures/high_quality_wiki_reference.txt").read_text()[:5000]
    docs = _input(tmp_path, reference, [good, None, "boom " * 60, "too short"])
    real = filters_mod.gopher_reason

    def flaky(text, **kw):  # injected fault: one record makes the rule raise
        if text.startswith("boom"):
            raise RuntimeError("injected")
        return real(text, **kw)

    monkeypatch.setattr(filters_mod, "gopher_reason", flaky)
    assert filter_shard.fn(str(tmp_path), "rules", RULES, docs, 0) == 1
    m = read_manifest(filter_stage(str(tmp_path), "rules", RULES, docs).commit(num_shards=1))
    assert m["counts"]["kept"] == 1
    assert m["counts"]["rejected"] == {"gopher_too_few_words": 1, "no_text": 1}
    assert m["counts"]["failed"] == {"RuntimeError": 1}
    assert m["failed_ids"] == [{"id": "d2", "kind": "RuntimeError"}]
    assert accounted(m)
    assert [r["id"] for r in iter_rows(m)] == ["d0"]


def test_done_shard_is_skipped(tmp_path, reference):
    docs = _input(tmp_path, reference, ["a b c"])
    assert filter_shard.fn(str(tmp_path), "rules", RULES, docs, 0) == 0
    assert filter_shard.fn(str(tmp_path), "rules", RULES, docs, 0) == -1  # marker present: nothing redone


def test_unknown_stage(tmp_path, reference):
    docs = _input(tmp_path, reference, ["a"])
    with pytest.raises(ValueError, match="unknown filter stage"):
        filter_shard.fn(str(tmp_path), "nope", {}, docs, 0)
