"""The scaling flow's training runs on a Dask LocalCluster give the same sweep as threads."""

import json

import pyarrow.parquet as pq

from flows.scaling import ScalingFlowConfig, scaling_flow
from lm.data.shards import manifest_dir, read_manifest
from lm.train.data import byte_tokens, write_token_shards


def _sweep(corpus, root, runner: dict) -> dict:
    cfg = ScalingFlowConfig(
        corpus=str(corpus),
        root=str(root),
        budgets=[1e9, 2e9],
        model_sizes=[16000, 33000, 53000],
        context_length=32,
        batch_size=4,
        eval_batches=2,
        min_steps=5,
        target_budget=1e11,
        num_bootstrap=10,
        device="cpu",
        runner=runner,
    )
    out = scaling_flow(config=cfg)
    stage = manifest_dir(read_manifest(out["manifest"]))
    rows = pq.read_table(f"{stage}/part-00000.parquet").to_pylist()
    for r in rows:
        r.pop("wall_time_s", None)  # the only field that records time
    return {"trained": out["trained"], "rows": rows, "fits": json.loads(open(f"{stage}/fits.json").read())}


def test_scaling_on_dask_matches_threads(prefect_harness, reference, tmp_path):
    ids = byte_tokens((reference / "assignment1-basics/fixtures/corpus.en").read_text())
    cut = int(len(ids) * 0.9)
    corpus = tmp_path / "tokens"
    write_token_shards(corpus, {"train": [ids[:cut]], "val": [ids[cut:]]}, vocab_size=257, eot_id=256)
    threads = _sweep(corpus, tmp_path / "threads", {"kind": "threads"})
    assert threads["trained"] == 6 and all(r["status"] == "completed" for r in threads["rows"])
    assert _sweep(corpus, tmp_path / "dask", {"kind": "dask", "max_workers": 2}) == threads
