"""The pretrain stage (lm/train/stage.py): a timeout kills the training process group and the next
attempt resumes from the checkpoint; the whole stage runs in a process that never imports Prefect."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm.data.shards import read_manifest
from lm.train.data import byte_tokens, write_token_shards
from lm.train.stage import PretrainConfig, pretrain_stage, run_training

REPO = Path(__file__).resolve().parents[3]


def test_timeout_kills_and_next_attempt_resumes(reference, tmp_path):
    ids = byte_tokens((reference / "assignment1-basics/fixtures/corpus.en").read_text())
    manifest = write_token_shards(tmp_path / "tok", {"train": [ids[:100_000]], "val": [ids[100_000:]]}, vocab_size=257)
    train = dict(
        model=dict(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96),
        batch_size=8,
        max_steps=100_000,
        eval_interval=10_000,
        checkpoint_interval=10,
        log_interval=10,
        device="cpu",
    )
    lines = []
    # A loaded machine may need a while just to import torch: lengthen the timeout until an attempt
    # gets past its first checkpoint (every attempt is killed: max_steps is out of reach).
    for timeout in (8, 20, 60):
        cfg = PretrainConfig(tokens=str(tmp_path / "tok"), train=train, timeout_s=timeout, retries=0)
        with pytest.raises(TimeoutError, match=f"timeout_s={timeout}"):
            run_training(cfg, str(manifest), str(tmp_path / "run"), log=lines.append)
        if (tmp_path / "run" / "checkpoints").is_dir() and any((tmp_path / "run" / "checkpoints").iterdir()):
            break
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps, "no attempt made progress before its timeout"
    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    done = int(ckpts[-1].name.split("-")[1])
    assert done >= 10
    again = cfg.model_copy(update={"timeout_s": 120, "train": cfg.train.model_copy(update={"max_steps": done + 5})})
    lines.clear()
    summary = run_training(again, str(manifest), str(tmp_path / "run"), log=lines.append)
    assert any(f"resumed from {ckpts[-1]}" in ln for ln in lines)
    assert summary["status"] == "completed" and summary["steps"] == done + 5


def test_the_whole_stage_runs_without_prefect(reference, tmp_path):
    # lm/ never imports prefect: the stage (byte tokens -> training subprocess -> finalize) in a plain process
    code = f"""
import json, sys
from lm.train.stage import PretrainConfig, run_pretrain
model = dict(vocab_size="auto", context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96)
cfg = PretrainConfig(root={str(tmp_path)!r}, text_file={str(reference / "assignment1-basics/fixtures/corpus.en")!r},
                     train=dict(model=model, batch_size=4, max_steps=3, eval_interval=3, eval_batches=1,
                                checkpoint_interval=3, device="cpu"),
                     sample_prompts=["The "], sample_tokens=3, retries=0, timeout_s=300)
first = run_pretrain(cfg, log=lambda line: None)
assert run_pretrain(cfg, log=print) == first  # complete: skipped
assert "prefect" not in sys.modules
print(json.dumps(first))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is complete; skipping" in done.stdout
    m = read_manifest(json.loads(done.stdout.splitlines()[-1]))
    assert m["stage"] == "pretrain" and m["model_config"]["vocab_size"] == 257 and m["counts"]["steps"] == 3


def test_fingerprint_resolves_auto_vocab_and_ignores_run_settings(reference, tmp_path):
    ids = byte_tokens((reference / "assignment1-basics/fixtures/corpus.en").read_text()[:20_000])
    manifest = str(write_token_shards(tmp_path / "tok", {"train": [ids]}, vocab_size=257))
    model = dict(vocab_size="auto", context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96)

    def fingerprint(**train):
        cfg = PretrainConfig(
            root=str(tmp_path), tokens=str(tmp_path / "tok"), train={"model": model, "max_steps": 10, **train}
        )
        return pretrain_stage(cfg, manifest).fingerprint

    base = fingerprint()
    assert fingerprint(model={**model, "vocab_size": 257}) == base  # auto = the manifest's 257
    assert (
        fingerprint(
            compile=True,
            optimizer_impl="for_loop",
            activation_checkpointing=True,
            allow_tf32=False,
            compile_backend="aot_eager",
            allow_changed=True,
            device="cpu",
        )
        == base
    )
    assert fingerprint(lr=1e-3) != base and fingerprint(dtype="bfloat16") != base
    with pytest.raises(ValueError, match="model.vocab_size=200 is smaller than the vocabulary"):
        fingerprint(model={**model, "vocab_size": 200})
