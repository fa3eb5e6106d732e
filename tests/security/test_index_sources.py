"""``index:`` sources: an index file may not smuggle credentials into outputs, nor make the run
read local files, unless explicitly allowed (issue #17, item 3)."""

from __future__ import annotations

import pytest

from lm.data.remote import HttpOptions, expand_sources
from lm.data.warc import iter_records

SECRET = "s3cr3t-Pa55"
CC = "commoncrawl"


def _index(tmp_path, filename: str, offset: int = 0, length: int = 100):
    p = tmp_path / "hits.jsonl"
    p.write_text(f'{{"filename": "{filename}", "offset": {offset}, "length": {length}}}\n')
    return p


def test_an_entry_with_credentials_is_refused_without_echoing_the_secret(tmp_path):
    index = _index(tmp_path, f"http://crawler:{SECRET}@127.0.0.1:9/crawl-data/x.warc.gz")
    for attempt in (lambda: expand_sources([f"index:{index}"]), lambda: list(iter_records(f"index:{index}"))):
        with pytest.raises(ValueError, match="carries credentials") as e:
            attempt()
        assert SECRET not in str(e.value) and "crawler" not in str(e.value)
        assert "line 1" in str(e.value)


def test_the_secret_never_reaches_a_manifest(prefect_harness, tmp_path):
    from flows.data import DataConfig, data_flow

    index = _index(tmp_path, f"http://crawler:{SECRET}@127.0.0.1:9/x.warc.gz")
    root = tmp_path / "out"
    with pytest.raises(ValueError, match="carries credentials") as e:
        data_flow(config=DataConfig(sources=[f"index:{index}"], root=str(root), filters=None))
    assert SECRET not in str(e.value)
    written = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
    assert not any(SECRET.encode() in p.read_bytes() for p in written)
    assert not any(p.name == "_manifest.json" or p.name.endswith(".done.json") for p in written)


def test_local_paths_in_an_index_only_when_allowed(tmp_path, reference):
    warc = reference / CC / "warcfile.warc.gz"
    index = _index(tmp_path, str(warc), 940, 10905)
    with pytest.raises(ValueError, match="allow_local_index_paths"):
        expand_sources([f"index:{index}"])
    with pytest.raises(ValueError, match="allow_local_index_paths"):
        list(iter_records(f"index:{index}"))
    (rec,) = list(iter_records(f"index:{index}", http=HttpOptions(allow_local_index_paths=True)))
    assert rec.error is None and rec.url == "http://003338.cn/l41/481397.html"


@pytest.mark.parametrize(
    "filename",
    ["../../etc/passwd", "crawl-data/../../../x.warc.gz", "file:///etc/passwd", "s3://bucket/x.warc.gz", "~/x.warc.gz"],
)
def test_entries_that_leave_the_base_are_refused(tmp_path, filename):
    index = _index(tmp_path, filename)
    with pytest.raises(ValueError, match="line 1"):
        list(iter_records(f"index:{index}", base_url=str(tmp_path / "base")))
