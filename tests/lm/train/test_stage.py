"""The training subprocess: a timeout kills the process group; the next attempt resumes from the checkpoint."""

import json

import pytest

from lm.train.data import byte_tokens, write_token_shards
from lm.train.stage import PretrainConfig, run_training


def test_timeout_kills_and_next_attempt_resumes(reference, tmp_path):
    ids = byte_tokens((reference / "assignment1-basics/fixtures/corpus.en").read_text())
    manifest = write_token_shards(tmp_path / "tok", {"train": [ids[:100_000]], "val": [ids[100_000:]]}, vocab_size=257)
    train = dict(model=dict(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96),
                 batch_size=8, max_steps=100_000, eval_interval=10_000, checkpoint_interval=10, log_interval=10, device="cpu")
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
