"""SIGKILL the tokenizer, tokenize, scaling, sft, dpo and grpo flows mid-stage, rerun,
compare with an uninterrupted run.

Each stage runs as its own flow (``python -m flows.cli run <flow>``) in a subprocess that is
killed at a seed-drawn point, then is rerun (in this process) to the end:

- ``tokenizer`` (one task: sample, train BPE, save): killed at a random point between its
  first file and its manifest; the rerun trains again from the start (there is nothing to
  resume inside one BPE training).
- ``tokenize`` (one task per corpus shard): killed after k shards (k from the seed) or a
  random delay after the run started writing; the rerun does only the missing shards.
- ``scaling`` (one cached training run per (budget, size)): killed after k runs finished plus
  a random delay, i.e. inside a run; the rerun reuses the finished runs (their results are
  not rewritten) and retrains the interrupted one.
- ``sft`` / ``dpo`` / ``grpo``: killed a random time into training. These stages do not
  checkpoint mid-training: the rerun trains from the start (same seed → same weights).

Inputs of each stage are the uninterrupted run's outputs (fingerprints hash inputs'
fingerprints, not paths), so one stage is tested at a time. Compared: every file of the
stage directory (bytes; JSON without timings; the runs table without wall times), record
ids lost/duplicated where the stage has ids, in = kept + rejected + failed. ``pretrain`` is
covered by test_training_faults.py (kill mid-step, resume, identical losses).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chaos_report import lost_and_duplicated
from kill import (
    after_markers,
    after_start,
    diff_snapshots,
    first_differences,
    flow_env,
    ids_of,
    run_flow,
    stage_complete,
    stage_dirs,
    stage_snapshot,
)

from lm.data.shards import Stage, accounted, read_manifest

FAULT = "SIGKILL flow process"
STAGES = ["tokenizer", "tokenize", "scaling", "sft", "dpo", "grpo"]
SHARD_DELAY_S = "0.1"
# The tokenizer stage's two test pauses (before training, before the manifest) last this × 1
# and × 2 seconds: its kill lands within them, whatever the load makes of the training time.
TOKENIZER_DELAY_S = 1.0
ALIGN = {
    "data": {"num_train": 200, "num_eval": 16},
    "base": {"num_steps": 5, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64},
    "options": {"max_new_tokens": 4, "num_samples": 8, "num_threads": 1},
}


def _corpus(reference: Path, root: Path) -> str:
    """A 4-shard corpus stage of real English text (the CS336 corpus.en, by paragraph)."""
    paras = [
        p.strip() for p in (reference / "assignment1-basics/fixtures/corpus.en").read_text().split("\n") if p.strip()
    ]
    stage = Stage(root, "corpus", version="1", config={"fixture": "sigkill"})
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    for i in range(4):
        with stage.open_shard(i, schema=schema) as w:
            for j, text in enumerate(paras[i::4]):
                w.count_in()
                w.write({"id": f"p{i}-{j}", "text": text})
    return str(stage.commit(4))


def _configs(reference: Path, root: Path, clean: dict[str, str]) -> dict[str, dict]:
    """Each flow's config writing under ``root``; inputs from ``clean`` (stage → manifest)."""
    r = str(root)
    return {
        "tokenizer": {
            "input": clean["corpus"],
            "root": r,
            "vocab_size": 700,
            "sample_bytes": 5_000_000,
            "heldout_fraction": 0.05,
        },
        "tokenize": {
            "input": clean["corpus"],
            "tokenizer": str(Path(clean.get("tokenizer", ".")).parent),
            "root": r,
            "val_fraction": 0.1,
            "num_threads": 1,
            # One shard at a time: "killed after k shards" then lands inside shard k+1 (each
            # pauses SHARD_DELAY_S), not after the last of several shards finishing together.
            "max_workers": 1,
        },
        "scaling": {
            "text": str(reference / "assignment1-basics/fixtures/corpus.en"),
            "root": r,
            "budgets": [1e9, 2e9],
            "model_sizes": [16000, 33000, 53000],
            "context_length": 32,
            "batch_size": 4,
            "eval_batches": 2,
            "min_steps": 5,
            "target_budget": 1e11,
            "num_bootstrap": 10,
            "device": "cpu",
        },
        "sft": {
            **ALIGN,
            "root": r,
            "model_manifest": clean.get("align-base"),
            "sft": {"num_steps": 20, "batch_size": 8, "eval_every": 10},
        },
        "dpo": {
            **ALIGN,
            "root": r,
            "model_manifest": clean.get("sft"),
            "dpo": {"num_steps": 8, "batch_size": 4, "eval_every": 4},
        },
        "grpo": {
            **ALIGN,
            "root": r,
            "model_manifest": clean.get("sft"),
            "grpo": {"num_steps": 4, "num_prompts_per_step": 2, "group_size": 4, "max_new_tokens": 4, "eval_every": 2},
        },
    }


def _run_in_process(name: str, cfg: dict) -> str:
    from flows.cli import config_model, load_flow

    flow = load_flow(name)
    out = flow(config=config_model(flow).model_validate(cfg))
    return out["manifest"] if isinstance(out, dict) else str(out)


@pytest.fixture(scope="module")
def clean(prefect_harness, reference, tmp_path_factory):
    """The uninterrupted runs (in this process), once for the module: stage → (manifest, seconds)."""
    root = tmp_path_factory.mktemp("train-clean")
    manifests = {"corpus": _corpus(reference, tmp_path_factory.mktemp("corpus"))}
    seconds = {}
    for name in STAGES:
        cfg = _configs(reference, root, manifests)[name]
        t0 = time.monotonic()
        if name == "sft":  # the sft flow first trains the demo base model when given none
            cfg["model_manifest"] = None
        manifests[name] = _run_in_process(name, cfg)
        seconds[name] = time.monotonic() - t0
        if name == "sft":
            manifests["align-base"] = next(
                i["path"] for i in read_manifest(manifests["sft"])["inputs"] if i["stage"] == "align-base"
            )
    return root, manifests, seconds


def _stage_files(root: Path, stage: str, roots: list[Path]) -> dict:
    (d,) = stage_dirs(root, stage)
    snap = stage_snapshot(d, root=roots[0])
    for other in roots[1:]:  # both roots read as <root>
        snap = json.loads(
            json.dumps({k: v for k, v in snap.items() if not isinstance(v, bytes)}).replace(str(other), "<root>")
        ) | {k: v for k, v in snap.items() if isinstance(v, bytes)}
    if stage == "scaling":  # the runs table has wall times: compare it without them
        table = pq.read_table(d / "part-00000.parquet")
        snap["part-00000.parquet"] = table.drop_columns(["wall_time_s"]).to_pylist()
        for k in [k for k in snap if k.endswith(".done.json")]:
            snap[k].get("shard", {}).pop("sha256", None)
            snap[k].get("shard", {}).pop("bytes", None)
        m = snap["_manifest.json"]
        for s in m["shards"]:
            s.pop("sha256", None), s.pop("bytes", None)
    return snap


def _runs(root: Path) -> dict:
    """Scaling: each run's result (no wall time) and final weights."""
    out = {}
    for res in sorted((root / "scaling-runs").glob("*/result.json")):
        r = json.loads(res.read_text())
        r.pop("wall_time_s", None)
        weights = sorted(res.parent.glob("checkpoints/*/model.safetensors"))
        out[res.parent.name] = (r, [w.read_bytes() for w in weights[-1:]])
    return out


def _kill_point(rng: random.Random, name: str, root: Path, clean) -> callable:
    _, manifests, seconds = clean
    if name == "tokenize":
        pending = 4 - sum(1 for _ in (root / "tokenize").glob("*/part-*.done.json"))
        if pending > 1 and rng.random() < 0.6:
            return after_markers(root, name, rng.randint(1, pending - 1), delay_s=rng.uniform(0.0, 0.08))
        return after_start(root, name, rng.uniform(0.0, 0.08))
    if name == "scaling":
        runs = read_manifest(manifests["scaling"])["counts"]["runs_completed"]
        k, per_run = rng.randint(0, runs - 1), seconds["scaling"] / runs
        return _after_results(root, k, rng.uniform(0.1, 0.7) * per_run)
    if name == "tokenizer":
        # From the stage directory's creation to its manifest: sampling, the first pause, BPE
        # training, the second pause, saving. A clock measured on the uninterrupted run can miss
        # on a loaded machine (the stage finishes first); the pauses alone are 3 × TOKENIZER_DELAY_S.
        return after_start(root, name, rng.uniform(0.0, 0.8) * 3 * TOKENIZER_DELAY_S)
    # sft / dpo / grpo: the stage directory appears only when training is over; time from the
    # moment the flow's data stage is ready, i.e. when training starts.
    return _after_stage_ready(root, "align-data", rng.uniform(0.05, 0.8) * seconds[name])


def _after_results(root: Path, k: int, delay_s: float):
    since, seen = time.time(), [None]

    def check():
        if seen[0] is None:
            if sum(p.stat().st_mtime >= since for p in (root / "scaling-runs").glob("*/result.json")) >= k:
                seen[0] = time.monotonic()
            return None
        return f"scaling: {delay_s:.2f}s after run {k} finished" if time.monotonic() - seen[0] >= delay_s else None

    return check


def _after_stage_ready(root: Path, stage: str, delay_s: float):
    seen = [None]

    def check():
        if seen[0] is None:
            if stage_complete(root, stage):
                seen[0] = time.monotonic()
            return None
        return f"{delay_s:.2f}s into training" if time.monotonic() - seen[0] >= delay_s else None

    return check


def _trial(seed: int, name: str, reference: Path, tmp: Path, clean) -> dict:
    clean_root, manifests, _ = clean
    rng = random.Random(f"{seed}-{name}")
    root = tmp / f"seed-{seed}"
    cfg = _configs(reference, root, manifests)[name]
    log = tmp / f"seed-{seed}-{name}.log"
    runs_before = None
    r = run_flow(
        name,
        cfg,
        tmp / f"{name}.yaml",
        kill_when=_kill_point(rng, name, root, clean),
        env=flow_env({"LMPIPE_TEST_SHARD_DELAY_S": str(TOKENIZER_DELAY_S) if name == "tokenizer" else SHARD_DELAY_S}),
        log_path=log,
    )
    interrupted = r.killed and not stage_complete(root, name)
    if name == "scaling":  # finished runs must be reused as they are
        runs_before = {p: p.stat().st_mtime_ns for p in (root / "scaling-runs").glob("*/result.json")}
    manifest = _run_in_process(name, cfg)
    want, got = _stage_files(clean_root, name, [clean_root]), _stage_files(root, name, [root, clean_root])
    diff = [first_differences(want.get(k), got.get(k), k) for k in diff_snapshots(want, got)]
    if name == "scaling":
        if _runs(root) != _runs(clean_root):
            diff.append("scaling-runs")
        if any(p.stat().st_mtime_ns != t for p, t in runs_before.items()):
            diff.append("a finished run was retrained")
    lost = dup = 0
    if name == "tokenize":  # documents: every corpus row is in exactly one output, as before
        want = [(s["index"], s["split"], s["docs"], s["tokens"]) for s in read_manifest(manifests[name])["shards"]]
        got = [(s["index"], s["split"], s["docs"], s["tokens"]) for s in read_manifest(manifest)["shards"]]
        lost, dup = lost_and_duplicated(want, got)
    elif name in ("sft", "dpo", "grpo"):  # held-out samples shard
        lost, dup = lost_and_duplicated(ids_of(manifests[name]), ids_of(manifest))
    return {
        "interrupted": interrupted,
        "where": r.where,
        "diff": diff,
        "accounted": accounted(read_manifest(manifest)),
        "lost": lost,
        "dup": dup,
    }


def _trials(plan: dict[int, list[str]], reference, tmp_path, clean, chaos_record, label=""):
    results = {s: [] for s in STAGES}
    for seed, names in plan.items():
        for name in names:
            results[name].append(_trial(seed, name, reference, tmp_path, clean))
    for name, rs in results.items():
        if rs:
            ok = sum(not r["diff"] and r["accounted"] and not r["lost"] and not r["dup"] for r in rs)
            how = (
                "rerun resumes at missing shards"
                if name == "tokenize"
                else (
                    "rerun reuses finished runs, retrains the killed one"
                    if name == "scaling"
                    else "rerun restarts the stage (no mid-stage checkpoint)"
                )
            )
            chaos_record(
                FAULT + label,
                name,
                len(rs),
                ok,
                sum(r["lost"] for r in rs),
                sum(r["dup"] for r in rs),
                note=(
                    f"{sum(r['interrupted'] for r in rs)} kill(s) landed mid-stage; {how}; output == uninterrupted run"
                ),
            )
    for name, rs in results.items():
        for r in rs:
            assert not r["diff"] and r["accounted"] and not r["lost"] and not r["dup"], (name, r)
        if rs:
            assert any(r["interrupted"] for r in rs), f"{name}: no kill landed before the stage finished: {rs}"


def test_sigkill_training_stages(clean, reference, tmp_path, trials, chaos_record):
    """Seed s targets every other stage (from s % 2): 2 seeds kill each stage once."""
    _trials({seed: STAGES[seed % 2 :: 2] for seed in range(trials)}, reference, tmp_path, clean, chaos_record)


@pytest.mark.soak
def test_sigkill_training_stages_soak(clean, reference, tmp_path, trials, chaos_record):
    """Every seed kills every stage."""
    _trials({seed: STAGES for seed in range(100, 100 + trials)}, reference, tmp_path, clean, chaos_record, " (soak)")
