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
    base = dict(
        model=MODEL,
        data=str(data),
        out_dir=str(out),
        batch_size=8,
        max_steps=40,
        lr=3e-3,
        warmup_steps=4,
        eval_interval=20,
        eval_batches=2,
        checkpoint_interval=10,
        keep_last=2,
        log_interval=20,
        device="cpu",
    )
    return TrainConfig.model_validate({**base, **kw})


def _losses(run_dir):
    rows = [json.loads(ln) for ln in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"], [
        (r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval"
    ]


def test_train_learns_and_writes_metrics_and_checkpoints(byte_shards, tmp_path, one_thread):
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
    assert {"loss", "lr", "grad_norm", "tokens", "time"} <= set(row) and row["total_steps"] == 40
    assert row["tokens_per_s"] > 0 and row["step_time_s"] > 0 and row["mfu"] is None  # CPU: no peak FLOP/s, no MFU
    m = load_model(s["checkpoint"])
    assert m.config.d_model == 32
    # running again resumes at the end: nothing to do, same summary losses
    again = train(_cfg(byte_shards, tmp_path / "run"))
    assert again["steps"] == 40 and again["final_train_loss"] == s["final_train_loss"]


def _cli(cfg: TrainConfig, cfg_path: Path) -> subprocess.Popen:
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lm.train", "--config", str(cfg_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_kill_and_resume_gives_identical_losses(byte_shards, tmp_path):
    kw = dict(
        max_steps=60, model={**MODEL, "d_model": 64, "context_length": 64, "d_ff": 192}, batch_size=16, keep_last=10
    )
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


def test_compiled_checkpointed_and_bf16_runs_train_like_eager(byte_shards, tmp_path, one_thread):
    kw = dict(max_steps=6, eval_interval=100, checkpoint_interval=100, model={**MODEL, "num_heads": 2, "d_model": 32})
    eager = train(_cfg(byte_shards, tmp_path / "eager", **kw))
    # aot_eager: dynamo + AOTAutograd trace forward and backward (fullgraph), without inductor's C++ build
    compiled = train(
        _cfg(
            byte_shards,
            tmp_path / "compiled",
            compile=True,
            compile_backend="aot_eager",
            activation_checkpointing=True,
            optimizer_impl="for_loop",
            **kw,
        )
    )
    bf16 = train(_cfg(byte_shards, tmp_path / "bf16", dtype="bfloat16", **kw))
    want = [loss for _, loss in _losses(tmp_path / "eager")[0]]
    assert [loss for _, loss in _losses(tmp_path / "compiled")[0]] == pytest.approx(want, abs=1e-5)
    assert [loss for _, loss in _losses(tmp_path / "bf16")[0]] == pytest.approx(want, abs=0.05)
    assert eager["steps"] == compiled["steps"] == bf16["steps"] == 6
    assert all(p.dtype == torch.float32 for p in load_model(bf16["checkpoint"]).parameters())  # fp32 master weights


def test_nan_guard_stops_and_keeps_last_good_checkpoint(byte_shards, tmp_path, monkeypatch, one_thread):
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
    # the manifest's vocabulary is larger than the model's: refused before any work, naming both
    write_token_shards(tmp_path / "tok", {"train": [np.array([1, 2, 300, 4] * 50)]}, vocab_size=400)
    with pytest.raises(ValueError, match=r"model.vocab_size=257 is smaller than the vocabulary of .*: vocab_size 400"):
        train(_cfg(tmp_path / "tok", tmp_path / "run"))
    # a manifest that understates it: the shard's ids are checked too
    write_token_shards(tmp_path / "tok2", {"train": [np.array([1, 2, 300, 4] * 50)]}, vocab_size=257)
    with pytest.raises(ValueError, match=r"train-00000.bin holds token id 300 ≥ model vocab_size=257"):
        train(_cfg(tmp_path / "tok2", tmp_path / "run"))


def test_cli_takes_the_vocab_size_from_the_token_manifest(reference, tmp_path, capsys, one_thread):
    # docs/pretrain.md: python -m lm.train --config configs/pretrain-demo.yaml --set data=<token dir>
    from lm.train.__main__ import main

    ids = np.frombuffer((reference / "assignment1-basics/fixtures/corpus.en").read_bytes()[:40_000], dtype=np.uint8)
    write_token_shards(tmp_path / "tok", {"train": [ids.astype(np.int64) * 11]}, vocab_size=3000, tokenizer="bpe-3000")
    args = [
        "--config",
        str(REPO / "configs/pretrain-demo.yaml"),
        "--set",
        f"data={tmp_path / 'tok'}",
        "--set",
        f"out_dir={tmp_path / 'run'}",
        "--set",
        "max_steps=2",
        "--set",
        "batch_size=2",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["model_config"]["vocab_size"] == 3000
    assert main([*args, "--set", "model.vocab_size=257"]) == 2  # explicit and too small: a clear error, no traceback
    assert "model.vocab_size=257 is smaller than the vocabulary of" in capsys.readouterr().err


def test_resume_with_changed_settings_is_refused_unless_allowed(byte_shards, tmp_path, capsys, one_thread):
    from lm.train.__main__ import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(byte_shards, tmp_path / "run", max_steps=4, checkpoint_interval=2).model_dump()))
    assert main(["--config", str(cfg)]) == 0
    changed = [
        "--set",
        "max_steps=6",
        "--set",
        "weight_decay=0.0",
        "--set",
        "beta2=0.99",
        "--set",
        "model.rope_theta=500",
    ]
    assert main(["--config", str(cfg), *changed]) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and "--allow-changed" in err
    for line in (
        "weight_decay: 0.1 in the checkpoint, 0.0 now",
        "beta2: 0.95 in the checkpoint, 0.99 now",
        "model.rope_theta: 10000.0 in the checkpoint, 500.0 now",
    ):
        assert line in err
    assert "max_steps" not in err  # how long to train may change
    assert [p.name for p in list_checkpoints(tmp_path / "run")][-1] == "step-0000004"  # nothing trained
    assert main(["--config", str(cfg), *changed, "--allow-changed"]) == 0
    meta = json.loads((tmp_path / "run/checkpoints/step-0000006/meta.json").read_text())
    assert meta["extra"]["changed_on_resume"] == [
        {
            "step": 4,
            "changed": {"beta2": [0.95, 0.99], "model.rope_theta": [10000.0, 500.0], "weight_decay": [0.1, 0.0]},
        }
    ]
    assert meta["optimizer"]["param_groups"][0]["weight_decay"] == 0.0  # the new value applied, not the checkpoint's
    assert meta["train_config"]["model"]["rope_theta"] == 500.0


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
