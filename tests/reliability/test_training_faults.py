"""Training under faults: SIGKILL at random steps and inside checkpoint writes; injected NaNs.

Each trial runs ``python -m lm.train`` (the process the pretrain task launches) on byte tokens
of the CS336 corpus.en fixture with a tiny model, and faults it through ``LMPIPE_FAULT_INJECT``
(lm/faults.py: a point no outside signal can hit reliably, e.g. between writing the
weights and renaming the checkpoint into place) or a SIGKILL from this process at a random
step. Per trial (seeded):

- kill: one SIGKILL inside a checkpoint write (weights written / all files written, not
  renamed / renamed, not rotated), then one mid-step (after backward, before the update) or
  from outside at a random step; each rerun resumes from the newest checkpoint. The resumed
  run's per-step train and val losses equal an uninterrupted run's exactly, and its final
  weights and optimizer state are byte-identical. Records = steps: a step missing from
  metrics.jsonl is lost, one logged twice is duplicated.
- NaN in the loss at a random step k: exit status 3, the log names step k, no step ≥ k is
  logged as trained, the newest checkpoint is the last one before k, loadable, finite.
- NaN in the weights right after the update of a checkpoint step k (loss still finite):
  no checkpoint of step k is written; the run stops naming step k.
- SFT, DPO and GRPO save their policy only when their loop ends: a NaN loss (or, for SFT,
  NaN weights) at a random step raises naming it, no stage or checkpoint is written, the
  base model is untouched, and a rerun completes.

The existing lm-level tests (tests/lm/train/test_trainer.py) kill once after a checkpoint and
poison the loss in-process; these add the seeded sweep, the kill points inside the checkpoint
write, byte-identical weights, the weights guard and the flow's error message.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from chaos_report import lost_and_duplicated

from lm import faults
from lm.model.transformer import ModelConfig, TransformerLM
from lm.train.checkpoint import load_checkpoint
from lm.train.data import byte_tokens, write_token_shards
from lm.train.optim import AdamW
from lm.train.trainer import EXIT_DIVERGED, TrainConfig, list_checkpoints

REPO = Path(__file__).resolve().parents[2]
MODEL = dict(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96)
STEPS, EVERY = 24, 4  # optimizer steps, checkpoint interval
CKPT_PHASES = ["checkpoint.model", "checkpoint.meta", "checkpoint.renamed"]


@pytest.fixture(scope="module")
def tokens(reference, tmp_path_factory) -> Path:
    ids = byte_tokens((reference / "assignment1-basics/fixtures/corpus.en").read_text())
    cut = int(len(ids) * 0.9)
    out = tmp_path_factory.mktemp("tokens")
    write_token_shards(out, {"train": [ids[:cut]], "val": [ids[cut:]]}, vocab_size=257, eot_id=256)
    return out


def _config(tokens: Path, run: Path) -> Path:
    cfg = TrainConfig.model_validate(
        dict(
            model=MODEL,
            data=str(tokens),
            out_dir=str(run),
            batch_size=8,
            max_steps=STEPS,
            lr=3e-3,
            warmup_steps=2,
            eval_interval=8,
            eval_batches=2,
            checkpoint_interval=EVERY,
            keep_last=2,
            log_interval=100,
            device="cpu",
            seed=3,
        )
    )
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump()))
    return path


def _start(cfg_path: Path, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("LMPIPE_FAULT_INJECT", None)
    if fault:
        env["LMPIPE_FAULT_INJECT"] = fault
    return subprocess.Popen(
        [sys.executable, "-m", "lm.train", "--config", str(cfg_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(cfg_path: Path, fault: str | None = None) -> tuple[int, str]:
    p = _start(cfg_path, fault)
    out, _ = p.communicate(timeout=300)
    return p.returncode, out


def _rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _losses(run: Path) -> tuple[list, list]:
    rows = _rows(run)
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"], [
        (r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval"
    ]


def _final_bytes(run: Path) -> tuple[bytes, bytes]:
    last = list_checkpoints(run)[-1]
    return (last / "model.safetensors").read_bytes(), (last / "optimizer.safetensors").read_bytes()


def _kill_outside_at(cfg_path: Path, run: Path, step: int) -> int:
    """SIGKILL the trainer once metrics.jsonl shows ``step``; returns the steps logged when it died."""
    p = _start(cfg_path)
    deadline = time.time() + 300
    metrics = run / "metrics.jsonl"
    while p.poll() is None and time.time() < deadline:
        if metrics.exists() and metrics.read_text().count('"kind": "train"') >= step:  # lines are steps 1, 2, ...
            break
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    return len(_losses(run)[0])


@pytest.fixture(scope="module")
def uninterrupted(tokens, tmp_path_factory):
    run = tmp_path_factory.mktemp("train") / "full"
    rc, out = _run(_config(tokens, run))
    assert rc == 0, out
    return _losses(run), _final_bytes(run)


def test_sigkill_anywhere_resumes_to_identical_losses_and_weights(
    tokens, uninterrupted, tmp_path, trials, chaos_record
):
    want_losses, want_bytes = uninterrupted
    survived, lost, duplicated, notes = 0, 0, 0, []
    for trial in range(trials):
        rng = random.Random(7919 * trial + 1)
        run = tmp_path / f"trial{trial}"
        cfg = _config(tokens, run)
        phase, at = CKPT_PHASES[trial % len(CKPT_PHASES)], rng.randrange(EVERY, STEPS - EVERY, EVERY)
        rc1, out1 = _run(cfg, f"kill@{phase}:{at}")
        second = rng.randrange(at + 1, STEPS)
        if trial % 2 == 0:  # mid-step, after backward and before the update
            rc2, _ = _run(cfg, f"kill@backward:{second}")
            how = f"backward:{second}"
        else:  # from outside, wherever the trainer happens to be
            logged = _kill_outside_at(cfg, run, second)
            rc2, how = -signal.SIGKILL, f"outside after step {logged}"
        rc3, out3 = _run(cfg)
        got_losses = _losses(run)
        trained = [s for s, _ in got_losses[0]]
        n_lost, n_dup = lost_and_duplicated(range(1, STEPS + 1), trained)
        lost, duplicated = lost + n_lost, duplicated + n_dup
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        ok = (
            rc1 == -signal.SIGKILL
            and rc2 == -signal.SIGKILL
            and rc3 == 0
            and "resumed from" in out3
            and got_losses == want_losses
            and _final_bytes(run) == want_bytes
            and not leftovers
        )
        survived += ok
        notes.append(f"{phase}:{at}+{how}")
        if not ok:
            print(f"trial {trial} ({notes[-1]}): rc {rc1} {rc2} {rc3}, leftovers {leftovers}\n{out3[-2000:]}")
    chaos_record(
        "SIGKILL in checkpoint write + mid-step, rerun",
        "pretrain",
        trials,
        survived,
        lost,
        duplicated,
        note="; ".join(notes) + "; checks: losses and final weights bit-identical",
    )
    assert (survived, lost, duplicated) == (trials, 0, 0)


def _assert_last_good(run: Path, before: int) -> Path:
    """The newest checkpoint is the last one before step ``before``; it loads and is finite."""
    ckpts = list_checkpoints(run)
    newest = ckpts[-1]
    assert newest.name == f"step-{(before - 1) // EVERY * EVERY:07d}", [c.name for c in ckpts]
    model = TransformerLM(ModelConfig(**MODEL))
    opt = AdamW(model.parameters())
    assert load_checkpoint(newest, model, opt) == (before - 1) // EVERY * EVERY
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(t).all() for st in opt.state.values() for t in st.values() if isinstance(t, torch.Tensor))
    return newest


@pytest.mark.parametrize("where", ["loss", "param"])
def test_injected_nan_stops_with_last_good_checkpoint(tokens, tmp_path, trials, chaos_record, where):
    survived, notes = 0, []
    for trial in range(trials):
        rng = random.Random(104729 * trial + (where == "param"))
        # loss: any step after the first checkpoint; param: a checkpoint step (the update that
        # precedes a save is the one that must never reach disk)
        k = rng.randrange(EVERY + 1, STEPS) if where == "loss" else rng.randrange(2 * EVERY, STEPS, EVERY)
        run = tmp_path / f"{where}{trial}"
        rc, out = _run(_config(tokens, run), f"nan@{where}:{k}")
        summary = json.loads((run / "summary.json").read_text())
        trained = [s for s, _ in _losses(run)[0]]
        last_row = _rows(run)[-1]
        ok = (
            rc == EXIT_DIVERGED
            and summary["status"] == "diverged"
            and summary["diverged_step"] == k
            and f"step {k}: " in out
            and "not finite" in out
            and last_row["kind"] == "diverged"
            and last_row["step"] == k
            and max(trained) == (k - 1 if where == "loss" else k)
            and not (run / "checkpoints" / f"step-{k:07d}").exists()
        )
        if ok:
            _assert_last_good(run, k if where == "loss" else k)
        survived += ok
        notes.append(f"step {k}")
        if not ok:
            print(f"trial {trial} nan@{where}:{k}: rc {rc}\n{out[-2000:]}")
    chaos_record(
        f"NaN injected in {'the loss' if where == 'loss' else 'weights after the update'}",
        "pretrain",
        trials,
        survived,
        note="at "
        + ", ".join(notes)
        + "; checks: exit 3 naming the step, no checkpoint of it, last good one loads finite",
    )
    assert survived == trials


def test_pretrain_flow_names_the_diverged_step(prefect_harness, reference, tmp_path, monkeypatch):
    """The flow's error names the step and the checkpoint kept (the subprocess inherits the env)."""
    from flows.pretrain import pretrain_flow
    from tasks.pretrain import PretrainConfig

    train = dict(
        model=MODEL,
        batch_size=8,
        max_steps=STEPS,
        lr=3e-3,
        warmup_steps=2,
        eval_interval=8,
        eval_batches=2,
        checkpoint_interval=EVERY,
        log_interval=100,
        device="cpu",
    )
    cfg = PretrainConfig(
        root=str(tmp_path),
        text_file=str(reference / "assignment1-basics/fixtures/corpus.en"),
        train=train,
        sample_prompts=["The "],
        sample_tokens=5,
        timeout_s=300,
        retries=0,
    )
    monkeypatch.setenv("LMPIPE_FAULT_INJECT", "nan@loss:10")
    with pytest.raises(RuntimeError, match=r"training diverged at step 10 .*last good checkpoint .*step-0000008"):
        pretrain_flow(config=cfg)


# --------------------------------------------------------------------------- SFT / DPO / GRPO (no mid-run checkpoints)

ALIGN_STEPS = 4


@pytest.fixture
def align_inputs(reference, tmp_path):
    """A pretrain-style manifest (tiny byte-level model) and the data each alignment stage reads:
    the CS336 SFT sample as instruction pairs, GSM8K as preference pairs and as problems."""
    from lm.align.stages import AlignDataConfig, build_align_data
    from lm.data.shards import Stage
    from lm.train import save_checkpoint

    torch.manual_seed(0)
    model = TransformerLM(
        ModelConfig(vocab_size=257, context_length=48, d_model=32, num_layers=1, num_heads=2, d_ff=64)
    )
    stage = Stage(tmp_path, "pretrain", version="test", config={})
    save_checkpoint(model, None, 0, stage.path / "checkpoint")
    base = str(
        stage.commit(
            extra={
                "checkpoint": str(stage.path / "checkpoint"),
                "tokenizer": "bytes",
                "eot_id": 256,
                "model_config": model.config.model_dump(),
            }
        )
    )
    a5 = reference / "assignment5-alignment"
    gsm = AlignDataConfig(
        source="gsm8k",
        train_path=str(a5 / "data/gsm8k/train.jsonl"),
        eval_path=str(a5 / "data/gsm8k/test.jsonl"),
        num_train=8,
        num_eval=2,
        template="question_answer",
        prompts_dir=str(a5 / "prompts"),
    )
    data = {
        "sft": build_align_data(
            tmp_path,
            AlignDataConfig(
                source="sft_jsonl",
                train_path=str(a5 / "fixtures/sft_sample.jsonl"),
                template="alpaca_sft",
                prompts_dir=str(a5 / "prompts"),
            ),
            "instruction",
        ),
        "dpo": build_align_data(tmp_path, gsm, "preference"),
        "grpo": build_align_data(tmp_path, gsm, "problem"),
    }
    return base, data, stage.path / "checkpoint"


def _run_align(loop: str, root: Path, base: str, data: str):
    from lm.align.dpo import DPOConfig
    from lm.align.grpo import GRPOConfig
    from lm.align.sft import SFTConfig
    from lm.align.stages import StageOptions, run_dpo, run_grpo, run_sft

    opts = StageOptions(verifier=None, max_new_tokens=4, num_samples=1, num_threads=1)
    if loop == "sft":
        return run_sft(root, base, data, SFTConfig(num_steps=ALIGN_STEPS, batch_size=2, eval_every=2), opts)
    if loop == "dpo":
        return run_dpo(root, base, data, DPOConfig(num_steps=ALIGN_STEPS, batch_size=2, eval_every=2), opts)
    return run_grpo(
        root,
        base,
        data,
        GRPOConfig(num_steps=ALIGN_STEPS, num_prompts_per_step=2, group_size=2, max_new_tokens=4, eval_every=2),
        opts.model_copy(update={"verifier": "arithmetic"}),
    )


@pytest.mark.parametrize("loop", ["sft", "dpo", "grpo"])
def test_alignment_nan_stops_before_any_checkpoint(align_inputs, tmp_path, trials, chaos_record, loop):
    from lm.data.shards import read_manifest

    base, data, base_ckpt = align_inputs
    base_bytes = (base_ckpt / "model.safetensors").read_bytes()
    survived, notes = 0, []
    for trial in range(trials):
        rng = random.Random(f"{loop}-{trial}")
        # SFT also has a hook for NaN weights after an update (loss still finite); DPO/GRPO: the loss
        where, k = (f"{loop}.loss", f"{loop}.param")[trial % 2 if loop == "sft" else 0], rng.randint(1, ALIGN_STEPS)
        root = tmp_path / f"{loop}{trial}"
        named = f"step {k}" if where.endswith(".loss") else (f"step {k + 1}" if k < ALIGN_STEPS else f"after step {k}")
        try:
            with faults.injected(f"nan@{where}:{k}"):  # in this process (lm.faults: the env is read once)
                _run_align(loop, root, base, data[loop])
            stopped = ""
        except FloatingPointError as e:
            stopped = str(e)
        nothing_written = not list(root.glob(f"{loop}/*/checkpoint")) and not list(
            root.glob(f"{loop}/*/_manifest.json")
        )
        base_intact = (base_ckpt / "model.safetensors").read_bytes() == base_bytes
        rerun = read_manifest(_run_align(loop, root, base, data[loop]))  # the fault gone, the stage completes
        model = TransformerLM(ModelConfig(**rerun["model_config"]))
        load_checkpoint(rerun["checkpoint"], model)
        ok = (
            "diverged" in stopped
            and named in stopped
            and nothing_written
            and base_intact
            and all(torch.isfinite(p).all() for p in model.parameters())
        )
        survived += ok
        notes.append(f"{where}:{k}")
        if not ok:
            print(
                f"trial {trial} nan@{where}:{k}: error {stopped!r}, nothing "
                f"written {nothing_written}, base intact {base_intact}"
            )
    chaos_record(
        f"NaN injected in {loop.upper()}",
        loop,
        trials,
        survived,
        note="at "
        + ", ".join(notes)
        + "; checks: error names the step, no stage/checkpoint written, base model untouched, rerun completes",
    )
    assert survived == trials
