"""The filter-shard task wraps lm.data.filters.stage: called directly, it filters one shard,
counts a record that breaks a filter instead of dying, and skips a shard that is done."""

import pyarrow as pa

import lm.data.filters.rules as rules
from lm.data.filters.stage import commit_filters, plan_filters
from lm.data.shards import Stage, accounted, iter_rows, read_manifest
from tasks.filters import filter_shard

SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("source", pa.string()), ("text", pa.string())])
ONLY_GOPHER = {
    "langid": {"enabled": False},
    "pii": {"enabled": False},
    "quality": {"enabled": False},
    "harmful": {"enabled": False},
    "rules": {"c4": False, "bad_words": False},
}


def _input(root, texts):
    st = Stage(root, "extract", version="test", config={})
    with st.open_shard(0, schema=SCHEMA) as w:
        for i, t in enumerate(texts):
            w.count_in()
            w.write({"id": f"d{i}", "url": f"u{i}", "source": "test", "text": t})
    return str(st.commit(num_shards=1))


def test_failing_record_is_counted_not_fatal(tmp_path, reference, monkeypatch):
    good = (reference / "assignment4-data/fixtures/high_quality_wiki_reference.txt").read_text()[:5000]
    docs = _input(tmp_path, [good, None, "boom " * 60, "too short"])
    real = rules.gopher_reason

    def flaky(text, **kw):  # injected fault: one record makes the rule raise
        if text.startswith("boom"):
            raise RuntimeError("injected")
        return real(text, **kw)

    monkeypatch.setattr(rules, "gopher_reason", flaky)
    plan = plan_filters(ONLY_GOPHER)
    assert filter_shard.fn(str(tmp_path), plan, docs, 0) == 1
    m = read_manifest(commit_filters(str(tmp_path), plan, docs, 1))
    assert m["counts"]["kept"] == 1
    assert m["counts"]["rejected"] == {"rules:gopher_too_few_words": 1, "rules:no_text": 1}
    assert m["counts"]["failed"] == {"rules:RuntimeError": 1}
    assert m["failed_ids"] == [{"id": "d2", "kind": "rules:RuntimeError"}]
    assert accounted(m)
    assert [r["id"] for r in iter_rows(m)] == ["d0"]


def test_done_shard_is_skipped(tmp_path):
    docs = _input(tmp_path, ["a b c"])
    plan = plan_filters(ONLY_GOPHER)
    assert filter_shard.fn(str(tmp_path), plan, docs, 0) == 0
    assert filter_shard.fn(str(tmp_path), plan, docs, 0) == -1  # marker present: nothing redone
