"""The scaling flow end to end on a tiny sweep: train, cache, extend, artifacts."""

import json

import pyarrow.parquet as pq
import pytest
from artifact_checks import assert_progress, latest_artifact  # tests/flows is on sys.path

from flows.scaling import scaling_flow
from lm.data.shards import read_manifest
from lm.scaling.report import verdict_message
from lm.scaling.sweep import ScalingConfig
from lm.train.data import byte_tokens, write_token_shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, reference):
    ids = byte_tokens((reference / "assignment1-basics/fixtures/corpus.en").read_text())
    cut = int(len(ids) * 0.9)
    out = tmp_path_factory.mktemp("tokens")
    write_token_shards(out, {"train": [ids[:cut]], "val": [ids[cut:]]}, vocab_size=257, eot_id=256)
    return out


def config(corpus, root, budgets):
    return ScalingConfig(
        corpus=str(corpus),
        root=str(root),
        budgets=budgets,
        model_sizes=[16000, 33000, 53000],
        context_length=32,
        batch_size=4,
        eval_batches=2,
        min_steps=5,
        target_budget=1e11,
        num_bootstrap=10,
        device="cpu",
    )


def test_scaling_flow_caches_runs_and_extends(prefect_harness, corpus, tmp_path):
    from prefect.artifacts import Artifact

    state = scaling_flow(config=config(corpus, tmp_path, [1e9, 2e9]), return_state=True)
    first = state.result()
    assert (first["runs"], first["trained"], first["cached"], first["failed"]) == (6, 6, 0, 0)
    # progress per finished run (6 runs: a line each), the closing artifact with every run's
    # training curve and the verdict
    assert_progress("scaling", flow_run_id=state.state_details.flow_run_id, total=6, every=1, unit="run")
    assert verdict_message(first["verdict"]) in latest_artifact("scaling-curves").data
    assert verdict_message(first["verdict"]) in latest_artifact("scaling-recommendation").data
    m = read_manifest(first["manifest"])
    assert m["stage"] == "scaling" and m["counts"]["runs_completed"] == 6
    stage = m["_path"].rsplit("/", 1)[0]
    table = pq.read_table(f"{stage}/part-00000.parquet").to_pylist()
    assert len(table) == 6 and {r["status"] for r in table} == {"completed"}
    for r in table:
        assert r["compute"] <= r["budget"] and r["final_val_loss"] > 0 and r["wall_time_s"] > 0
        assert (tmp_path / "scaling-runs" / r["run_id"] / "result.json").exists()
    fits = json.loads(open(f"{stage}/fits.json").read())
    assert fits["recommendation"]["target_budget"] == 1e11
    assert open(f"{stage}/isoflop.png", "rb").read(4) == b"\x89PNG"
    for key in ("scaling-runs", "scaling-laws", "scaling-recommendation", "scaling-counts"):
        assert Artifact.get(key) is not None, key
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "scaling-runs").glob("*/result.json")}

    again = scaling_flow(config=config(corpus, tmp_path, [1e9, 2e9]))
    assert (again["trained"], again["cached"]) == (0, 6)
    assert again["manifest"] == first["manifest"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing retrained or rewritten

    extended = scaling_flow(config=config(corpus, tmp_path, [1e9, 2e9, 4e9]))
    assert (extended["runs"], extended["trained"], extended["cached"]) == (9, 3, 6)
    assert extended["manifest"] != first["manifest"]
    assert len(list((tmp_path / "scaling-runs").glob("*/result.json"))) == 9
