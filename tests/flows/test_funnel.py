"""The funnel as a flow on real text: every stage, rerun behaviour, config validation."""

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.funnel import FiltersFlowConfig, filters_flow
from flows.funnel_config import FunnelConfig
from lm.data.shards import accounted, iter_rows, read_manifest
from funnel_inputs import make_extract

STAGES = ["langid", "pii", "rules", "quality", "harmful", "exact_dedup", "minhash"]


@pytest.fixture(scope="module")
def funnel_run(tmp_path_factory, reference, prefect_harness):
    root = tmp_path_factory.mktemp("funnel")
    extract = make_extract(root, reference)
    # Relaxed C4 rules and quality threshold so documents survive to the dedup stages.
    cfg = FunnelConfig.model_validate({
        "rules": {"c4_options": {"min_sentences": 2}},
        "quality": {"min_score": 0.3},
        "harmful": {"enabled": True, "nsfw_max_score": 0.99, "toxic_max_score": 0.99},
        "minhash": {"num_hashes": 100, "num_bands": 20, "threshold": 0.8, "num_bucket_tasks": 2},
    })
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
    langid = read_manifest(stages["langid"])
    assert langid["counts"]["rejected"]["language_not_kept"] > 0  # the Chinese/Japanese pages
    kept = list(iter_rows(stages["langid"]))
    assert all(r["language"] == "en" for r in kept)
    rejected = {r["url"]: r["reason"] for r in iter_rows(stages["langid"], kind="rejects")}
    assert rejected["bad://empty"] == "language_not_kept"
    pii = read_manifest(stages["pii"])
    assert pii["counts"]["emails_masked"] >= 3 and pii["counts"]["phone_numbers_masked"] >= 3
    texts = {r["url"]: r["text"] for r in iter_rows(stages["pii"])}
    assert "|||EMAIL_ADDRESS|||" in texts["bad://control"] and "a@b.com" not in texts["bad://control"]
    rules = {r["url"]: r["reason"] for r in iter_rows(stages["rules"], kind="rejects")}
    assert rules["bad://huge-line"] == "gopher_too_many_words"  # 'word ' * 300k on one line
    assert rules["bad://control"] == "gopher_too_few_words"
    # Line dedup drops every copy of a repeated line: both copies of wiki://1 end empty.
    exact = {r["url"]: r["reason"] for r in iter_rows(stages["exact_dedup"], kind="rejects")}
    assert exact["wiki://1"] == exact["wiki://1-copy"] == "empty_after_line_dedup"
    assert read_manifest(stages["exact_dedup"])["counts"]["lines_dropped"] > 0
    # MinHash keeps exactly one of the near-duplicate pair.
    final_urls = {r["url"] for r in iter_rows(stages["minhash"])}
    assert len(final_urls & {"wiki://0", "wiki://0-edited"}) == 1
    dups = {r["url"]: r["reason"] for r in iter_rows(stages["minhash"], kind="rejects")}
    assert dups == {"wiki://0-edited": "near_duplicate"}


def test_funnel_report(funnel_run):
    root, _, _, stages = funnel_run
    final = read_manifest(stages["minhash"])
    report = json.loads((root / "funnel" / final["fingerprint"] / "funnel.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["input", *STAGES]
    docs = [r["docs"] for r in report["rows"]]
    assert docs == sorted(docs, reverse=True) and docs[-1] == final["counts"]["kept"]
    assert (root / "funnel" / final["fingerprint"] / "funnel.png").read_bytes()[:4] == b"\x89PNG"
    assert {s["reason"] for s in report["reject_samples"]} >= {"language_not_kept", "near_duplicate"}


def test_rerun_with_one_threshold_changed_recomputes_only_downstream(funnel_run):
    root, extract, config, stages = funnel_run
    mtimes = {n: os.stat(p).st_mtime_ns for n, p in stages.items()}
    again = filters_flow(config=config)
    assert again == stages  # same config: every stage skipped
    assert {n: os.stat(p).st_mtime_ns for n, p in again.items()} == mtimes
    changed = config.model_copy(deep=True)
    changed.filters.quality.min_score = 0.35
    new = filters_flow(config=changed)
    for name in ["langid", "pii", "rules"]:
        assert new[name] == stages[name] and os.stat(new[name]).st_mtime_ns == mtimes[name]
    for name in ["quality", "harmful", "exact_dedup", "minhash"]:
        assert new[name] != stages[name], name


def test_stages_switch_off(funnel_run, tmp_path):
    _, extract, _, _ = funnel_run
    cfg = FunnelConfig.model_validate({k: {"enabled": False} for k in ["langid", "rules", "quality", "harmful", "minhash"]})
    stages = filters_flow(config=FiltersFlowConfig(extract_manifest=extract, root=str(tmp_path), filters=cfg))
    assert list(stages) == ["pii", "exact_dedup"]


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"langid": {"min_score": 1.2}}, "langid.min_score"),
        ({"quality": {"min_score": -0.1}}, "quality.min_score"),
        ({"minhash": {"threshold": 0}}, "minhash.threshold"),
        ({"minhash": {"num_hashes": 100, "num_bands": 7}}, "minhash"),
        ({"rules": {"gopher_thresholds": {"max_ellipsis_line_fraction": 2}}}, "rules.gopher_thresholds.max_ellipsis_line_fraction"),
        ({"quality": {"model_path": "/no/such/model.bin"}}, "quality.model_path"),
        ({"harmful": {"nsfw_model_path": __file__}}, "harmful.nsfw_model_path"),
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
    assert list(out) == ["extract", "langid", "pii", "rules"]
    assert read_manifest(out["langid"])["inputs"][0]["path"] == out["extract"]
    assert list(data_flow(config=DataConfig(sources=src, root=str(tmp_path / "b"), filters=None))) == ["extract"]


def test_replacing_a_classifier_model_changes_the_stage_fingerprint(tmp_path):
    from flows.funnel import stage_config
    from flows.funnel_config import QualityConfig
    from lm.data.classifier import train_classifier

    rows = [("good prose sentence here", "wiki")] * 10 + [("menu home login", "cc")] * 10
    path = tmp_path / "q.bin"
    train_classifier(rows, path, epoch=5)
    first = stage_config("quality", QualityConfig(model_path=str(path)))
    os.utime(path, ns=(1, 1))  # a retrained/replaced file: new mtime (and usually size)
    assert stage_config("quality", QualityConfig(model_path=str(path))) != first


def test_named_configs_validate():
    import yaml

    from flows.classifiers import TrainClassifierConfig

    repo = Path(__file__).resolve().parents[2]
    cfg = FiltersFlowConfig.model_validate(yaml.safe_load((repo / "configs/filters.yaml").read_text()))
    assert cfg.filters == FunnelConfig()  # the file spells out the defaults
    TrainClassifierConfig.model_validate(yaml.safe_load((repo / "configs/train-quality-classifier.yaml").read_text()))
