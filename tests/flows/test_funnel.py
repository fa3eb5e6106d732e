"""The funnel as a flow on real text: the one-pass filter stage and the dedup stages, rerun
behaviour, the funnel report, config validation, a filter added through the registry."""

import json
import os
from pathlib import Path

import pytest
from funnel_inputs import make_extract
from pydantic import ValidationError

from flows.funnel import FiltersFlowConfig, filters_flow
from flows.funnel_config import FunnelConfig
from lm.data.filters.stage import filter_counts, materialized_stages, plan_filters
from lm.data.shards import accounted, iter_rows, read_manifest
from lm.data.stages import EmptyStageError

STAGES = ["filters", "exact_dedup", "minhash"]
FILTERS = ["langid", "pii", "rules", "quality", "harmful"]


@pytest.fixture(scope="module")
def funnel_run(tmp_path_factory, reference, prefect_harness):
    root = tmp_path_factory.mktemp("funnel")
    extract = make_extract(root, reference)
    # Relaxed C4 rules and quality threshold so documents survive to the dedup stages.
    cfg = FunnelConfig.model_validate(
        {
            "rules": {"c4_options": {"min_sentences": 2}},
            "quality": {"min_score": 0.3},
            "harmful": {"enabled": True, "toxic": True, "nsfw_max_score": 0.99, "toxic_max_score": 0.99},
            "minhash": {"num_hashes": 100, "num_bands": 20, "threshold": 0.8, "num_bucket_tasks": 2},
        }
    )
    config = FiltersFlowConfig(extract_manifest=extract, root=str(root), filters=cfg)
    stages = filters_flow(config=config)
    return root, extract, config, stages


def test_all_stages_run_in_order_and_account_for_every_row(funnel_run):
    root, extract, _, stages = funnel_run
    assert list(stages) == STAGES
    previous = read_manifest(extract)
    for name in STAGES:
        m = read_manifest(stages[name])
        assert m["stage"] == name
        assert accounted(m), name
        assert m["counts"]["in"] == previous["counts"]["kept"], name
        previous = m
    assert previous["counts"]["kept"] > 0


def test_stage_effects(funnel_run):
    _, _, _, stages = funnel_run
    m = read_manifest(stages["filters"])
    assert m["filters"] == FILTERS
    per = {f["filter"]: f for f in filter_counts(m)}
    assert per["langid"]["rejected"]["language_not_kept"] > 0  # the Chinese/Japanese pages
    kept = list(iter_rows(stages["filters"]))
    assert all(r["language"] == "en" for r in kept)
    assert all(r["quality_score"] >= 0.3 and r["nsfw_score"] < 0.99 and r["toxic_score"] < 0.99 for r in kept)
    rejected = {r["url"]: r["reason"] for r in iter_rows(stages["filters"], kind="rejects")}
    assert rejected["bad://empty"] == "langid:language_not_kept"
    assert per["pii"]["counts"]["emails_masked"] >= 3 and per["pii"]["counts"]["phone_numbers_masked"] >= 3
    assert m["counts"]["pii.emails_masked"] == per["pii"]["counts"]["emails_masked"]
    assert rejected["bad://huge-line"] == "rules:gopher_too_many_words"  # 'word ' * 300k on one line
    assert rejected["bad://control"] == "rules:gopher_too_few_words"
    # Line dedup drops every copy of a repeated line: both copies of wiki://1 end empty.
    exact = {r["url"]: r["reason"] for r in iter_rows(stages["exact_dedup"], kind="rejects")}
    assert exact["wiki://1"] == exact["wiki://1-copy"] == "empty_after_line_dedup"
    assert read_manifest(stages["exact_dedup"])["counts"]["lines_dropped"] > 0
    # MinHash keeps exactly one of the near-duplicate pair.
    final_urls = {r["url"] for r in iter_rows(stages["minhash"])}
    assert len(final_urls & {"wiki://0", "wiki://0-edited"}) == 1
    dups = {r["url"]: r["reason"] for r in iter_rows(stages["minhash"], kind="rejects")}
    assert dups == {"wiki://0-edited": "near_duplicate"}


def test_materialized_filters_match_the_one_pass_counts(funnel_run, tmp_path):
    """materialize_each: a stage per filter, written in the same pass, with the same numbers
    the per-filter rows of the funnel show (what the separate stages used to write)."""
    root, extract, config, stages = funnel_run
    cfg = config.model_copy(deep=True)
    cfg.filters.materialize_each = True
    cfg.filters.exact_dedup.enabled = cfg.filters.minhash.enabled = False
    out = filters_flow(config=cfg)
    assert out == {"filters": stages["filters"]}  # the one-pass output is the same stage
    plan = plan_filters(cfg.filters)
    per = filter_counts(stages["filters"])
    for st, f in zip(materialized_stages(str(root), plan, extract), per):
        m = read_manifest(st.manifest_path)
        assert m["stage"] == f["filter"] and accounted(m)
        assert (m["counts"]["in"], m["counts"]["kept"]) == (f["in"], f["kept"])
    assert read_manifest(st.manifest_path)["counts"]["kept"] == read_manifest(stages["filters"])["counts"]["kept"]


def test_funnel_report(funnel_run):
    root, _, _, stages = funnel_run
    final = read_manifest(stages["minhash"])
    report = json.loads((root / "funnel" / final["fingerprint"] / "funnel.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["input", *FILTERS, "exact_dedup", "minhash"]
    docs = [r["docs"] for r in report["rows"]]
    assert docs == sorted(docs, reverse=True) and docs[-1] == final["counts"]["kept"]
    rows = {r["stage"]: r for r in report["rows"]}
    assert report["filters"] == filter_counts(
        stages["filters"]
    )  # in, kept, rejected by rule, failed, bytes, own counts
    for f in filter_counts(stages["filters"]):  # per filter: the numbers the separate stages had
        assert (rows[f["filter"]]["docs"], rows[f["filter"]]["bytes"]) == (f["kept"], f["text_bytes_kept"])
        assert rows[f["filter"]]["rejected"] == f["in"] - f["kept"] - sum(f["failed"].values())
    assert rows["pii"]["docs"] == rows["langid"]["docs"] and rows["pii"]["bytes"] != rows["langid"]["bytes"]  # masked
    assert (root / "funnel" / final["fingerprint"] / "funnel.png").read_bytes()[:4] == b"\x89PNG"
    assert {s["reason"] for s in report["reject_samples"]} >= {"langid:language_not_kept", "near_duplicate"}
    assert {s["stage"] for s in report["reject_samples"]} >= {"langid", "rules", "minhash"}


def test_rerun_with_one_threshold_changed_recomputes_only_downstream(funnel_run):
    root, extract, config, stages = funnel_run
    mtimes = {n: os.stat(p).st_mtime_ns for n, p in stages.items()}
    extract_mtime = os.stat(extract).st_mtime_ns
    again = filters_flow(config=config)
    assert again == stages  # same config: every stage skipped
    assert {n: os.stat(p).st_mtime_ns for n, p in again.items()} == mtimes
    changed = config.model_copy(deep=True)
    changed.filters.quality.min_score = 0.35
    new = filters_flow(config=changed)
    for name in STAGES:
        assert new[name] != stages[name], name
    assert os.stat(extract).st_mtime_ns == extract_mtime  # extract is never recomputed


def test_stages_switch_off(funnel_run, tmp_path):
    _, extract, _, _ = funnel_run
    cfg = FunnelConfig.model_validate(
        {k: {"enabled": False} for k in ["langid", "rules", "quality", "harmful", "minhash"]}
    )
    stages = filters_flow(config=FiltersFlowConfig(extract_manifest=extract, root=str(tmp_path), filters=cfg))
    assert list(stages) == ["filters", "exact_dedup"]
    assert read_manifest(stages["filters"])["filters"] == ["pii"]
    cfg = FunnelConfig.model_validate({k: {"enabled": False} for k in [*FILTERS, "minhash"]})
    stages = filters_flow(config=FiltersFlowConfig(extract_manifest=extract, root=str(tmp_path), filters=cfg))
    assert list(stages) == ["exact_dedup"]


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"langid": {"min_score": 1.2}}, "langid.min_score"),
        ({"quality": {"min_score": -0.1}}, "quality.min_score"),
        ({"minhash": {"threshold": 0}}, "minhash.threshold"),
        ({"minhash": {"num_hashes": 100, "num_bands": 7}}, "minhash"),
        (
            {"rules": {"gopher_thresholds": {"max_ellipsis_line_fraction": 2}}},
            "rules.gopher_thresholds.max_ellipsis_line_fraction",
        ),
        ({"quality": {"model_path": "/no/such/model.bin"}}, "quality.model_path"),
        ({"harmful": {"nsfw_model_path": __file__}}, "harmful.nsfw_model_path"),
        ({"langid": {"min_scor": 0.5}}, "langid.min_scor"),
    ],
)
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValidationError) as e:
        FunnelConfig.model_validate(bad)
    assert field in str(e.value)


def test_data_flow_runs_extract_then_funnel(reference, tmp_path, prefect_harness):
    from flows.data import DataConfig, data_flow

    src = [str(reference / "commoncrawl" / "warcfile.warc.gz")]
    off = {k: {"enabled": False} for k in ["quality", "harmful", "exact_dedup", "minhash"]}
    out = data_flow(config=DataConfig(sources=src, root=str(tmp_path / "a"), filters=off))
    assert list(out) == ["extract", "filters"]
    assert read_manifest(out["filters"])["inputs"][0]["path"] == out["extract"]
    assert read_manifest(out["filters"])["filters"] == ["langid", "pii", "rules"]
    assert list(data_flow(config=DataConfig(sources=src, root=str(tmp_path / "b"), filters=None))) == ["extract"]


def test_replacing_a_classifier_model_changes_the_stage_fingerprint(tmp_path):
    from lm.data.classifier import train_classifier

    rows = [("good prose sentence here", "wiki")] * 10 + [("menu home login", "cc")] * 10
    path = tmp_path / "q.bin"
    train_classifier(rows, path, epoch=5)
    settings = {k: {"enabled": False} for k in ["langid", "pii", "rules", "harmful"]} | {
        "quality": {"model_path": str(path)}
    }
    first = plan_filters(settings)["identity"]
    os.utime(path, ns=(1, 1))  # touched, same content: same stage
    assert plan_filters(settings)["identity"] == first
    train_classifier(rows[:15] + rows[-3:], path, epoch=5)  # retrained in place: new content
    assert plan_filters(settings)["identity"] != first


def test_wrong_language_code_fails_before_any_work(reference, tmp_path, prefect_harness):
    from flows.data import DataConfig, data_flow

    src = [str(reference / "commoncrawl" / "warcfile.warc.gz")]
    cfg = DataConfig(sources=src, root=str(tmp_path / "out"), filters={"langid": {"languages": ["english"]}})
    with pytest.raises(ValueError, match="did you mean 'en'"):
        data_flow(config=cfg)
    assert not (tmp_path / "out").exists()


def test_a_filter_that_rejects_everything_fails_the_flow_unless_allowed(funnel_run, tmp_path):
    _, extract, _, _ = funnel_run
    cfg = FunnelConfig.model_validate(
        {
            "rules": {"gopher_thresholds": {"min_words": 100_000}},
            "quality": {"enabled": False},
            "harmful": {"enabled": False},
            "exact_dedup": {"enabled": False},
            "minhash": {"enabled": False},
        }
    )
    with pytest.raises(EmptyStageError, match="filter rules rejected .* documents \\(100.0%"):
        filters_flow(config=FiltersFlowConfig(extract_manifest=extract, root=str(tmp_path), filters=cfg))
    out = filters_flow(
        config=FiltersFlowConfig(extract_manifest=extract, root=str(tmp_path), filters=cfg, allow_empty=True)
    )
    final = read_manifest(out["filters"])
    assert final["counts"]["kept"] == 0
    report = json.loads((tmp_path / "funnel" / final["fingerprint"] / "funnel.json").read_text())
    assert report["warnings"] and "filter rules rejected" in report["warnings"][0]


TOY = """
import json, sys
from pydantic import Field
from lm.data.filters import Filter, FilterConfig, register_filter

class ShortLinesConfig(FilterConfig):
    max_fraction: float = Field(0.5, ge=0, le=1, description="largest fraction of lines under 4 words")

@register_filter(before="quality")
class ShortLinesFilter(Filter):
    name, Config, description = "short_lines", ShortLinesConfig, "drop pages made of short lines"

    def keep(self, doc):
        lines = [l for l in doc["text"].splitlines() if l.strip()]
        short = sum(len(l.split()) < 4 for l in lines) / max(len(lines), 1)
        return short <= self.config.max_fraction, "too_many_short_lines"

from flows.funnel import FiltersFlowConfig, filters_flow  # after the registration
schema = FiltersFlowConfig.model_json_schema()
cfg = FiltersFlowConfig.model_validate(json.loads(sys.argv[1]))
print(json.dumps({"stages": filters_flow(config=cfg), "form": json.dumps(schema)}))
"""


def test_a_registered_filter_runs_in_the_flow(funnel_run, tmp_path):
    """A filter defined outside lmpipe, added with register_filter: the config, the UI form
    (the flow's parameter schema), the stage and the funnel report pick it up."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "PREFECT_API_URL": PREFECT_API_URL.value()}  # this test's server
    _, extract, _, _ = funnel_run
    cfg = {
        "extract_manifest": extract,
        "root": str(tmp_path),
        "filters": {
            "short_lines": {"max_fraction": 0.2},
            "quality": {"enabled": False},
            "harmful": {"enabled": False},
            "minhash": {"enabled": False},
        },
    }
    done = subprocess.run(
        [sys.executable, "-c", TOY, json.dumps(cfg)], env=env, capture_output=True, text=True, timeout=600, cwd=repo
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert "drop pages made of short lines" in got["form"] and "largest fraction of lines under 4 words" in got["form"]
    m = read_manifest(got["stages"]["filters"])
    assert m["filters"] == ["langid", "pii", "rules", "short_lines"]
    toy = filter_counts(m)[-1]
    assert toy["filter"] == "short_lines" and toy["in"] > 0 and toy["kept"] + sum(toy["rejected"].values()) == toy["in"]
    final = read_manifest(got["stages"]["exact_dedup"])
    report = json.loads((tmp_path / "funnel" / final["fingerprint"] / "funnel.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["input", "langid", "pii", "rules", "short_lines", "exact_dedup"]


def test_named_configs_validate():
    import yaml

    from flows.classifiers import TrainClassifierConfig

    repo = Path(__file__).resolve().parents[2]
    cfg = FiltersFlowConfig.model_validate(yaml.safe_load((repo / "configs/filters.yaml").read_text()))
    assert cfg.filters == FunnelConfig()  # the defaults come from the models, not repeated in the file
    TrainClassifierConfig.model_validate(yaml.safe_load((repo / "configs/train-quality-classifier.yaml").read_text()))
