"""`python -m lm.train` under torchrun (2 CPU ranks, gloo): checkpoints move between world
sizes 2 and 1 and the losses are those of an uninterrupted single-process run. (ddp = none
through the pretrain flow: tests/flows/test_pretrain_distributed.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm.train.trainer import TrainConfig, list_checkpoints, train

REPO = Path(__file__).resolve().parents[3]
MODEL = dict(vocab_size=257, context_length=32, d_model=32, num_layers=2, num_heads=2, d_ff=96, tie_embeddings=True)


def _cfg(data, out, **kw):
    # cosine_steps fixed so a run cut at step 3 follows the same schedule as one that goes to 6
    base = dict(
        model=MODEL,
        data=str(data),
        out_dir=str(out),
        batch_size=8,
        max_steps=6,
        cosine_steps=6,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=3,
        eval_batches=2,
        checkpoint_interval=3,
        log_interval=1,
        device="cpu",
    )
    return TrainConfig.model_validate({**base, **kw})


def _torchrun(cfg: TrainConfig, nproc: int = 2) -> str:
    path = Path(cfg.out_dir).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "lm.train",
        "--config",
        str(path),
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _losses(run_dir) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


def _assert_close(a, b, what):
    assert [s for s, _ in a] == [s for s, _ in b], what
    for (step, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-4, f"{what}: step {step} loss {x} vs {y}"


@pytest.fixture(scope="module")
def reference_run(byte_shards, tmp_path_factory):
    """Uninterrupted single-process run: the losses every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_cfg(byte_shards, out))
    return _losses(out)


def test_checkpoint_moves_from_two_ranks_to_one_and_back(byte_shards, tmp_path, reference_run):
    # ZeRO-1 at world size 2 for 3 steps (the optimizer state is sharded; the checkpoint is not)...
    out = tmp_path / "two-to-one"
    _torchrun(_cfg(byte_shards, out, strategy="zero1", max_steps=3))
    assert [p.name for p in list_checkpoints(out)] == ["step-0000003"]
    # ...then resumed by one plain process to step 6: the uninterrupted run's losses.
    summary = train(_cfg(byte_shards, out))
    assert summary["steps"] == 6
    _assert_close(_losses(out), reference_run, "zero1 ×2 → none ×1")

    # And the other way: 3 steps in one process, resumed at world size 2 under FSDP.
    out = tmp_path / "one-to-two"
    train(_cfg(byte_shards, out, max_steps=3))
    stdout = _torchrun(_cfg(byte_shards, out, strategy="fsdp"))
    assert "resumed from" in stdout
    _assert_close(_losses(out), reference_run, "none ×1 → fsdp ×2")
