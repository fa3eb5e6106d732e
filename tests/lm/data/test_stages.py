"""The extract and filter stages from plain Python (no Prefect): one pass, per-filter counts,
score reuse, materialized filters, a filter added through the registry, unique record ids."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from funnel_inputs import make_extract  # tests/ is on sys.path
from pydantic import Field

import lm.data.filters as registry
from lm.data.classifier import train_classifier
from lm.data.filters import Filter, FilterConfig, register_filter
from lm.data.filters import quality as quality_filter
from lm.data.filters.stage import filter_counts, plan_filters
from lm.data.ingest import ExtractConfig, plan_shards
from lm.data.shards import accounted, iter_rows, iter_stage_tables, read_manifest, read_stage_table
from lm.data.stages import EmptyStageError, check_root_outside_sources, run_extract, run_filters

REPO = Path(__file__).resolve().parents[3]
CC = "commoncrawl"
NO_HARMFUL = {"harmful": {"enabled": False}}  # its default model trains on first use: not needed here
NO_QUALITY = {"quality": {"enabled": False}, **NO_HARMFUL}


@pytest.fixture(scope="module")
def extract(reference, tmp_path_factory):
    """An extract-like stage of real text: Common Crawl pages, Wikipedia-like articles, the
    CS336 fixtures and a few bad records (tests/funnel_inputs.py)."""
    root = tmp_path_factory.mktemp("stages")
    return root, make_extract(root, reference)


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "quality.bin"
    rows = [("the theory holds that liberty and justice matter in society", "wiki")] * 30
    rows += [("login register menu home cart shop now", "cc")] * 30
    train_classifier(rows, path, epoch=10)
    return str(path)


def test_extract_and_filters_run_without_prefect(reference, tmp_path, quality_model):
    script = f"""
import json, sys
from lm.data.stages import run_extract, run_filters
from lm.data.filters.stage import filter_counts
from lm.data.shards import read_manifest
ex = run_extract({str(tmp_path)!r}, [{str(reference / CC / "warcfile.warc.gz")!r}])
funnel = {{"quality": {{"model_path": {quality_model!r}, "min_score": 0.0}}, "harmful": {{"enabled": False}}}}
out = run_filters({str(tmp_path)!r}, ex, funnel)
print(json.dumps({{"prefect": sorted(m for m in sys.modules if m.split(".")[0] == "prefect"),
                  "extract": read_manifest(ex)["counts"], "filters": filter_counts(out)}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["prefect"] == []
    assert got["extract"]["kept"] == 16  # the 16 HTML responses of 50 records
    counts = {f["filter"]: f for f in got["filters"]}
    assert list(counts) == ["langid", "pii", "rules", "quality"]
    assert counts["langid"]["in"] == got["extract"]["kept"]
    for a, b in zip(got["filters"], got["filters"][1:]):
        assert b["in"] == a["kept"]


def test_one_pass_reasons_counts_and_columns(extract, quality_model):
    root, ex = extract
    path = run_filters(root, ex, {"quality": {"model_path": quality_model, "min_score": 0.2}, **NO_HARMFUL})
    m = read_manifest(path)
    assert m["stage"] == "filters" and accounted(m) and m["inputs"][0]["path"] == ex
    assert m["counts"]["in"] == read_manifest(ex)["counts"]["kept"]
    assert all(r.split(":", 1)[0] in {"langid", "rules", "quality"} for r in m["counts"]["rejected"])
    assert m["counts"]["rejected"]["langid:language_not_kept"] > 0  # the Chinese and Japanese pages
    assert any(r.startswith(("rules:gopher_", "rules:c4_")) for r in m["counts"]["rejected"])
    per = filter_counts(m)
    assert [f["filter"] for f in per] == m["filters"] == ["langid", "pii", "rules", "quality"]
    assert per[0]["in"] == m["counts"]["in"] and per[-1]["kept"] == m["counts"]["kept"]
    for f in per:
        assert f["in"] == f["kept"] + sum(f["rejected"].values()) + sum(f["failed"].values())
    assert set(per[1]["counts"]) == {"emails_masked", "phone_numbers_masked", "ips_masked"}
    assert per[-1]["text_bytes_kept"] == m["counts"]["text_bytes_kept"]
    kept = read_stage_table(m)
    assert {"language", "language_score", "quality_score"} <= set(kept.column_names)
    assert set(kept.column("language").to_pylist()) == {"en"}
    rejects = list(iter_rows(m, kind="rejects"))
    assert all(r["quality_score"] is not None for r in rejects if r["reason"].startswith("quality:"))
    assert all(r["quality_score"] is None for r in rejects if r["reason"].startswith("langid:"))
    assert (
        run_filters(root, ex, {"quality": {"model_path": quality_model, "min_score": 0.2}, **NO_HARMFUL}) == path
    )  # skipped


def test_threshold_change_reuses_the_scores(extract, quality_model, monkeypatch, tmp_path):
    _, ex = extract
    root = tmp_path  # a root of its own: a cold score cache
    calls = []
    real = quality_filter.quality_score

    def counting(text, path=None):  # a spy: counts model calls, returns the real scores
        calls.append(1)
        return real(text, path)

    monkeypatch.setattr(quality_filter, "quality_score", counting)
    loose = run_filters(
        root,
        ex,
        {"rules": {"enabled": False}, "quality": {"model_path": quality_model, "min_score": 0.0}, **NO_HARMFUL},
    )
    first = len(calls)
    # one model call per distinct text of a shard (wiki://1-copy repeats wiki://1)
    distinct = sum(len(set(t.column("text").to_pylist())) for t in iter_stage_tables(loose))
    assert first == distinct > 0 and read_manifest(loose)["counts"]["quality.in"] == first + 1
    scores = {r["id"]: r["quality_score"] for r in iter_rows(loose)}
    cut = sorted(scores.values())[len(scores) // 2]  # a threshold that keeps about half
    strict = run_filters(
        root,
        ex,
        {"rules": {"enabled": False}, "quality": {"model_path": quality_model, "min_score": cut}, **NO_HARMFUL},
    )
    assert strict != loose and len(calls) == first  # a new stage, and the model did not run again
    strict_rows = {r["id"]: r for r in [*iter_rows(strict), *iter_rows(strict, kind="rejects")]}
    assert {i: strict_rows[i]["quality_score"] for i in scores} == scores
    assert {i for i, s in scores.items() if s >= cut} == {r["id"] for r in iter_rows(strict)} != set(scores)
    assert all(strict_rows[i]["reason"] == "quality:quality_low" for i, s in scores.items() if s < cut)
    # another model file: other scores, so the model runs
    other = Path(quality_model).with_name("other.bin")
    shutil.copy(quality_model, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # same model, other content hash
    run_filters(
        root, ex, {"rules": {"enabled": False}, "quality": {"model_path": str(other), "min_score": cut}, **NO_HARMFUL}
    )
    assert len(calls) == 2 * first


def test_materialize_each_writes_a_stage_per_filter(extract, quality_model, tmp_path):
    root, ex = extract
    settings = {"quality": {"model_path": quality_model, "min_score": 0.2}, **NO_HARMFUL}
    one = run_filters(root, ex, settings)
    both = run_filters(root, ex, {**settings, "materialize_each": True})
    assert both == one  # same fingerprint: the one-pass output does not change
    plan = plan_filters({**settings, "materialize_each": True})
    from lm.data.filters.stage import materialized_stages

    mats = materialized_stages(root, plan, ex)
    assert [s.name for s in mats] == ["langid", "pii", "rules", "quality"]
    per = filter_counts(one)
    for st, f in zip(mats, per):
        m = read_manifest(st.manifest_path)
        assert accounted(m) and (m["counts"]["in"], m["counts"]["kept"]) == (f["in"], f["kept"])
        assert m["counts"]["rejected"] == {f"{f['filter']}:{k}": v for k, v in f["rejected"].items()}
    last = read_stage_table(mats[-1].manifest_path).to_pylist()
    assert last == read_stage_table(one).to_pylist()


class ToyConfig(FilterConfig):
    banned: str = Field("Wikipedia", description="drop documents that mention this word")


class ToyFilter(Filter):
    """A filter defined outside lm/data/filters, added through the public registration."""

    name, Config, description = "toy", ToyConfig, "drops documents mentioning a word"
    columns = {"toy_seen": "bool"}

    def keep(self, doc):
        doc["toy_seen"] = True
        return (self.config.banned not in doc["text"], "mentions_banned_word")


def test_a_registered_filter_joins_the_pass(extract, monkeypatch):
    root, ex = extract
    monkeypatch.setattr(registry, "FILTERS", list(registry.FILTERS))
    register_filter(ToyFilter, before="quality")
    path = run_filters(root, ex, {**NO_QUALITY, "toy": {"banned": "philosophy"}})
    m = read_manifest(path)
    assert m["filters"] == ["langid", "pii", "rules", "toy"]
    toy = filter_counts(m)[-1]
    assert toy["rejected"] == {"mentions_banned_word": toy["in"] - toy["kept"]} and toy["in"] > toy["kept"]
    assert all("philosophy" not in r["text"] and r["toy_seen"] for r in iter_rows(m))
    assert run_filters(root, ex, {**NO_QUALITY, "toy": {"enabled": False}}) != path


def test_failing_record_is_counted_not_fatal(extract, monkeypatch):
    root, ex = extract
    import lm.data.filters.rules as rules

    real = rules.gopher_reason

    def flaky(text, **kw):  # injected fault: one record makes the rule raise
        if "philosophy" in text:
            raise RuntimeError("injected")
        return real(text, **kw)

    monkeypatch.setattr(rules, "gopher_reason", flaky)
    m = read_manifest(run_filters(root, ex, {**NO_QUALITY, "rules": {"gopher_thresholds": {"min_words": 11}}}))
    assert [r["reason"] for r in iter_rows(m, kind="rejects") if "philosophy" in r["text"]] == []
    assert accounted(m) and m["counts"]["failed"]["rules:RuntimeError"] >= 1
    assert filter_counts(m)[2]["failed"] == {"RuntimeError": m["counts"]["failed"]["rules:RuntimeError"]}
    assert {f["kind"] for f in m["failed_ids"]} == {"rules:RuntimeError"}


def test_reject_all_warns_and_an_empty_output_fails(extract):
    root, ex = extract
    with pytest.raises(EmptyStageError, match="filter rules rejected .*100.0%.*allow_empty"):
        run_filters(root, ex, {**NO_QUALITY, "rules": {"gopher_thresholds": {"min_words": 100_000}}})
    from lm.data.stages import check_output, stage_warnings

    path = run_filters(
        root, ex, {**NO_QUALITY, "rules": {"gopher_thresholds": {"min_words": 100_000}}}, allow_empty=True
    )
    assert read_manifest(path)["counts"]["kept"] == 0
    assert check_output(path, allow_empty=True) == stage_warnings(path) != []
    with pytest.raises(ValueError, match="did you mean 'en'"):
        run_filters(root, ex, {"langid": {"languages": ["english"]}, **NO_HARMFUL})


def test_overlapping_sources_give_each_document_once(reference, tmp_path):
    src = tmp_path / "crawl"
    src.mkdir()
    for n in ("warcfile.warc.gz", "whirlwind.warc.gz"):
        (src / n).symlink_to(reference / CC / n)
    one = run_extract(tmp_path / "out", [str(src)])
    both = run_extract(tmp_path / "out", [str(src), str(src / "whirlwind.warc.gz"), str(src) + "/*.warc.gz"])
    assert both == one  # the same plan: each file read once
    m = read_manifest(one)
    ids = read_stage_table(m, columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == m["counts"]["kept"]
    again = tmp_path / "out2"
    m2 = read_manifest(run_extract(again, [str(src), str(src / "whirlwind.warc.gz")]))
    assert len(m2["notes"]) == 1 and "whirlwind.warc.gz" in m2["notes"][0] and "read once" in m2["notes"][0]


def test_ids_unique_on_pywb_and_common_crawl_samples(reference, tmp_path):
    from flows.demo import PYWB_VERSION
    from lm.cache import fetch_from_package

    pywb = fetch_from_package("pywb", PYWB_VERSION, "*sample_archive/warcs/*", "pywb-warcs")  # as `lmpipe demo` does
    srcs = [str(pywb), str(reference / CC)]
    m = read_manifest(run_extract(tmp_path, srcs))
    ids = [r["id"] for kind in ("shards", "rejects") for r in iter_rows(m, kind=kind, columns=["id"])]
    assert len(ids) == len(set(ids)) > 100
    assert m["version"] == "2"


def test_root_inside_a_source_is_refused(tmp_path, monkeypatch):
    (tmp_path / "crawl").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"root 'outputs' is inside source '\.'"):
        check_root_outside_sources("outputs", ["."])
    with pytest.raises(ValueError, match="inside source"):
        check_root_outside_sources(str(tmp_path / "crawl"), [str(tmp_path / "**" / "*.warc.gz")])
    check_root_outside_sources(str(tmp_path / "outputs"), [str(tmp_path / "crawl"), str(tmp_path / "*.warc.gz")])


def test_slice_bytes_bounds(reference):
    with pytest.raises(ValueError, match="slice_bytes=1 would plan one task per 1 bytes"):
        ExtractConfig(slice_bytes=1)
    with pytest.raises(ValueError, match="less than or equal"):
        ExtractConfig(slice_bytes=1 << 40)
    assert ExtractConfig(slice_bytes=0).slice_bytes == 0
    big = str(reference / CC / "clueweb-quirk.warc.gz")  # 260,849 bytes
    with pytest.raises(ValueError, match="more than 4096 tasks"):
        plan_shards([big], 16)  # past validation (a caller of the library): still bounded
