"""The trainer on CPU: learning, metrics, checkpoint rotation, kill-and-resume, NaN guard, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

import lm.train.trainer as trainer
from lm.model import load_model
from lm.train.data import write_token_shards
from lm.train.trainer import TrainConfig, list_checkpoints, train

REPO = Path(__file__).resolve().parents[3]
MODEL = dict(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96)


def _cfg(data, out, **kw):
    base = dict(model=MODEL, data=str(data), out_dir=str(out), batch_size=8, max_steps=40, lr=3e-3, warmup_steps=4,
                eval_interval=20, eval_batches=2, checkpoint_interval=10, keep_last=2, log_interval=20, device="cpu")
    return TrainConfig.model_validate({**base, **kw})


def _losses(run_dir):
    rows = [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"], [(r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval"]


def test_train_learns_and_writes_metrics_and_checkpoints(byte_shards, tmp_path):
    s = train(_cfg(byte_shards, tmp_path / "run"))
    assert s["status"] == "completed" and s["steps"] == 40 and s["tokens"] == 40 * 8 * 32
    train_losses, val_losses = _losses(tmp_path / "run")
    assert [st for st, _ in train_losses] == list(range(1, 41))
    assert [st for st, _ in val_losses] == [20, 40]
    assert train_losses[0][1] > 5.0 and s["final_train_loss"] < 3.5  # from ~ln(257) toward byte statistics
    assert s["final_val_loss"] == val_losses[-1][1]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-0000030", "step-0000040"]
    assert s["checkpoint"].endswith("step-0000040")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(row)
    m = load_model(s["checkpoint"])
    assert m.config.d_model == 32
    # running again resumes at the end: nothing to do, same summary losses
    again = train(_cfg(byte_shards, tmp_path / "run"))
    assert again["steps"] == 40 and again["final_train_loss"] == s["final_train_loss"]


def _cli(cfg: TrainConfig, cfg_path: Path) -> subprocess.Popen:
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lm.train", "--config", str(cfg_path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_and_resume_gives_identical_losses(byte_shards, tmp_path):
    kw = dict(max_steps=60, model={**MODEL, "d_model": 64, "context_length": 64, "d_ff": 192}, batch_size=16, keep_last=10)
    full = _cli(_cfg(byte_shards, tmp_path / "full", **kw), tmp_path / "full.yaml")
    out, _ = full.communicate(timeout=120)
    assert full.returncode == 0, out

    run = tmp_path / "killed"
    p = _cli(_cfg(byte_shards, run, **kw), tmp_path / "killed.yaml")
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step-0000020" / "meta.json").exists():
        assert p.poll() is None and time.time() < deadline, "run ended before its second checkpoint"
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL and not (run / "summary.json").exists()
    killed_at = len(_losses(run)[0])
    assert killed_at < 60

    resumed = _cli(_cfg(byte_shards, run, **kw), tmp_path / "killed.yaml")
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    assert _losses(run) == _losses(tmp_path / "full")  # every train and val loss, bit for bit


def test_nan_guard_stops_and_keeps_last_good_checkpoint(byte_shards, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = trainer.cross_entropy

    def poisoned(logits, targets):  # fault injection: step 8's loss is NaN
        calls["n"] += 1
        loss = real(logits, targets)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(trainer, "cross_entropy", poisoned)
    s = train(_cfg(byte_shards, tmp_path / "run", eval_interval=100, checkpoint_interval=5))
    assert s["status"] == "diverged" and s["steps"] == 7
    assert s["checkpoint"].endswith("step-0000005")
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kind"] == "diverged" and rows[-1]["step"] == 8
    assert all(torch.isfinite(p).all() for p in load_model(s["checkpoint"]).parameters())


def test_token_id_beyond_vocab_is_refused(tmp_path):
    write_token_shards(tmp_path / "tok", {"train": [np.array([1, 2, 300, 4] * 50)]}, vocab_size=400)
    with pytest.raises(ValueError, match=r"train-00000.bin holds token id 300 ≥ model vocab_size=257"):
        train(_cfg(tmp_path / "tok", tmp_path / "run"))


def test_config_errors_name_the_field(byte_shards, tmp_path):
    with pytest.raises(ValidationError, match="max_steps or max_tokens"):
        _cfg(byte_shards, tmp_path, max_steps=None)
    with pytest.raises(ValidationError, match="strategy"):
        _cfg(byte_shards, tmp_path, strategy="zero9")
    with pytest.raises(ValidationError, match="num_heads"):
        _cfg(byte_shards, tmp_path, model={**MODEL, "num_heads": 3})
    with pytest.raises(ValidationError, match="batch_size"):
        _cfg(byte_shards, tmp_path, batch_size=0)
    with pytest.raises(FileNotFoundError, match="no stage manifest"):
        train(_cfg(tmp_path / "nowhere", tmp_path / "run"))
    assert _cfg(byte_shards, tmp_path, max_steps=None, max_tokens=10_000).total_steps() == 40  # ceil(10000 / 256)


def test_cli_rejects_bad_config_with_status_2(byte_shards, tmp_path, capsys):
    from lm.train.__main__ import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(byte_shards, tmp_path / "run").model_dump()))
    assert main(["--config", str(cfg), "--set", "model.num_heads=5"]) == 2
    assert "num_heads" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
