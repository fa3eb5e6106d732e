"""SIGKILL the ``data`` flow process inside each of its stages, rerun, compare with an
uninterrupted run: every stage directory byte-identical (JSON without timings), no record
lost or duplicated, every input row accounted for (in = kept + rejected + failed).

Stages (in order): extract → filters (langid, pii, rules, quality, harmful in one pass) → line_counts
(exact dedup's counting pass) → line_duplicates → exact_dedup → minhash_signatures →
minhash_buckets → minhash_clusters → minhash. A trial is one seed: for each stage it targets,
the seed draws a kill point (after k of the stage's shards finished plus a small delay, or a
random delay after the run started writing the stage); the flow is started, killed there,
started again and killed at the next stage's point, ..., then run to the end. In ``make test``
(2 seeds) each seed targets every other stage, so each stage is killed once; the soak test
(``make chaos``) kills inside every stage for each of its seeds. A stage's report row counts
the trials that targeted it.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from chaos_report import lost_and_duplicated
from kill import (
    after_markers,
    after_start,
    diff_snapshots,
    flow_env,
    ids_of,
    landed_mid_stage,
    run_flow,
    stage_complete,
    stage_snapshot,
)

from lm.data.shards import accounted, read_manifest

CC = "commoncrawl"
FAULT = "SIGKILL flow process"
# Every stage directory the data flow writes, in order (single-task stages included).
STAGES = [
    "extract",
    "filters",
    "line_counts",
    "line_duplicates",
    "exact_dedup",
    "minhash_signatures",
    "minhash_buckets",
    "minhash_clusters",
    "minhash",
]
SHARDS = 4  # extract slices of the input (and so shards of every per-shard stage after it)
# Slow every shard's commit a little so a kill often lands between or inside shards.
SHARD_DELAY_S = "0.1"


def _config(reference: Path, root: Path) -> dict:
    return {
        "sources": [str(reference / CC / "warcfile.warc.gz"), str(reference / CC / "whirlwind.warc.gz")],
        "root": str(root),
        "max_workers": 2,
        "num_samples": 1,
        "extract": {"slice_bytes": 50_000},
        "filters": {
            "langid": {"min_score": 0.3},
            "rules": {"gopher_thresholds": {"min_words": 20}, "c4": False},
            "quality": {"min_score": 0.0},
            "minhash": {"num_bucket_tasks": 2, "threshold": 0.5},
        },
    }


def _snapshots(root: Path) -> dict[str, dict]:
    out = {}
    for stage in STAGES:
        dirs = [d for d in (root / stage).glob("*") if d.is_dir()]
        assert len(dirs) == 1, f"{stage}: expected one stage directory under {root}, found {dirs}"
        out[stage] = stage_snapshot(dirs[0], root=root)
    return out


@pytest.fixture(scope="module")
def reference_run(prefect_harness, reference, tmp_path_factory):
    """The uninterrupted run (in this process), computed once for the module."""
    from flows.data import DataConfig, data_flow

    root = tmp_path_factory.mktemp("data-clean")
    stages = data_flow(config=DataConfig.model_validate(_config(reference, root)))
    assert list(stages) == ["extract", "filters", "exact_dedup", "minhash"]
    snaps = _snapshots(root)
    assert sum(1 for k in snaps["extract"] if k.endswith(".done.json")) == SHARDS
    return root, stages, snaps


def _kill_point(rng: random.Random, root: Path, stage: str, num_shards: int):
    # Delays stay below SHARD_DELAY_S, so the kill lands while a shard is still being written.
    pending = num_shards - sum(1 for _ in (root / stage).glob("*/part-*.done.json"))
    if pending > 1 and rng.random() < 0.6:
        return after_markers(root, stage, rng.randint(1, pending - 1), delay_s=rng.uniform(0.0, 0.08))
    return after_start(root, stage, rng.uniform(0.0, 0.08))


def _shards(stage: str) -> int:
    return {"line_duplicates": 1, "minhash_buckets": 2}.get(stage, SHARDS)


def _sweep(seed: int, stages: list[str], kills_per_stage: int, reference: Path, tmp: Path) -> dict[str, list[str]]:
    """One trial: kill inside each of ``stages`` (``kills_per_stage`` times), then run to the
    end; returns stage → the kills that landed inside it."""
    rng = random.Random(seed)
    root = tmp / f"seed-{seed}"
    cfg = _config(reference, root)
    env = flow_env({"LMPIPE_TEST_SHARD_DELAY_S": SHARD_DELAY_S})
    log = tmp / f"seed-{seed}.log"
    landed: dict[str, list[str]] = {s: [] for s in STAGES}
    for stage in [s for s in stages for _ in range(kills_per_stage)]:
        if stage_complete(root, stage):
            continue  # an earlier kill landed after this stage had finished
        r = run_flow(
            "data",
            cfg,
            tmp / "cfg.yaml",
            kill_when=_kill_point(rng, root, stage, _shards(stage)),
            env=env,
            log_path=log,
        )
        if r.killed and landed_mid_stage(root, stage):
            landed[stage].append(r.where)
    final = run_flow("data", cfg, tmp / "cfg.yaml", env=env, log_path=log)
    assert final.returncode == 0, f"final run failed, see {log}:\n{log.read_text()[-3000:]}"
    return landed


def _check(root: Path, clean) -> tuple[dict[str, list[str]], dict[str, tuple[int, int]], dict[str, bool]]:
    clean_root, clean_stages, clean_snaps = clean
    snaps = _snapshots(root)
    diffs = {s: diff_snapshots(clean_snaps[s], snaps[s]) for s in STAGES}
    lost_dup, acc = {}, {}
    for s in STAGES:
        m = read_manifest(next(d for d in (root / s).glob("*") if d.is_dir()))
        acc[s] = accounted(m)
        if s in clean_stages:  # document stages: compare the ids kept and rejected
            want = ids_of(clean_stages[s]) + ids_of(clean_stages[s], kind="rejects")
            got = ids_of(m["_path"]) + ids_of(m["_path"], kind="rejects")
            lost_dup[s] = lost_and_duplicated(want, got)
        else:
            lost_dup[s] = (0, 0)
    return diffs, lost_dup, acc


def _trials(plan: dict[int, list[str]], kills_per_stage, reference, tmp_path, clean, chaos_record, label):
    """Run every seed of ``plan`` (seed → stages it kills in); one report row per stage."""
    results = {s: {"trials": 0, "ok": 0, "lost": 0, "dup": 0, "kills": 0, "fail": []} for s in STAGES}
    for seed, stages in plan.items():
        landed = _sweep(seed, stages, kills_per_stage, reference, tmp_path)
        diffs, lost_dup, acc = _check(tmp_path / f"seed-{seed}", clean)
        for s in stages:
            r = results[s]
            r["trials"] += 1
            r["kills"] += len(landed[s])
            r["lost"] += lost_dup[s][0]
            r["dup"] += lost_dup[s][1]
            if not diffs[s] and acc[s] and lost_dup[s] == (0, 0):
                r["ok"] += 1
            else:
                r["fail"].append(f"seed {seed}: differs {diffs[s][:5]} accounted={acc[s]}")
        # Stages after a kill are recomputed too: they must match as well (not reported per stage).
        bad = {s: d for s, d in diffs.items() if d or not acc[s] or lost_dup[s] != (0, 0)}
        assert not bad, f"seed {seed}: stages differ from the uninterrupted run: {bad}"
    for s in STAGES:
        r = results[s]
        chaos_record(
            FAULT + label,
            s,
            r["trials"],
            r["ok"],
            r["lost"],
            r["dup"],
            note=f"{r['kills']} kill(s) landed mid-stage; rerun == uninterrupted run, byte for byte",
        )
    for s in STAGES:
        r = results[s]
        assert r["ok"] == r["trials"] and r["lost"] == 0 and r["dup"] == 0, (s, r["fail"])
        assert r["kills"] >= 1, f"{s}: no kill landed inside the stage ({r['trials']} trial(s))"


def test_sigkill_every_data_stage(reference_run, reference, tmp_path, trials, chaos_record):
    """Seed s kills inside every other stage (from stage s % 2), so 2 seeds cover each stage once."""
    _trials(
        {seed: STAGES[seed % 2 :: 2] for seed in range(trials)}, 1, reference, tmp_path, reference_run, chaos_record, ""
    )


@pytest.mark.soak
def test_sigkill_every_data_stage_soak(reference_run, reference, tmp_path, trials, chaos_record):
    """Every seed kills inside every stage (other seeds, so other kill points, than above)."""
    _trials(
        {seed: STAGES for seed in range(100, 100 + trials)},
        1,
        reference,
        tmp_path,
        reference_run,
        chaos_record,
        " (soak)",
    )
