"""The training loop: TrainConfig in, checkpoints + metrics out; resumable to the exact same losses.

    python -m lm.train --config configs/pretrain-demo.yaml --set data=outputs/tokenize/<fp> --set out_dir=runs/demo
    torchrun --standalone --nproc-per-node 2 -m lm.train --config ... --set strategy=ddp
    # in-process (what scaling sweeps do):
    from lm.train.trainer import TrainConfig, train
    summary = train(TrainConfig(model=..., data="outputs/tokenize/<fp>", out_dir="runs/x", max_steps=100))

Read top to bottom, as in torchtitan: ``setup`` builds everything a run needs (device,
strategy, data, model, optimizer) and resumes it; ``train_step`` is one optimizer step;
``evaluate`` the validation loss; ``save`` one checkpoint; ``train`` the loop calling them.

Reads a token-shard directory (``_manifest.json`` + ``.bin`` shards, see ``lm.train.data``).
Writes into ``out_dir``::

    checkpoints/step-0000100/   model.safetensors, optimizer.safetensors, meta.json (last ``keep_last`` kept)
    metrics.jsonl               one line per step (loss, lr, grad_norm, tokens/s, step time, MFU) and per
                                eval (val_loss); the fields: lm.train.metrics
    summary.json                what ``train`` returns
    tb/                         TensorBoard events, only if tensorboard is installed

Resuming: with ``resume`` (default) a run restarts from the newest checkpoint in ``out_dir``;
weights, AdamW state, RNG states and the data sampler's state come back, and metrics lines past
that step are dropped, so an interrupted run logs exactly what an uninterrupted one does. A
resume with changed settings is refused (lm.train.resume). A non-finite loss or gradient norm
stops the run before the optimizer step, and non-finite weights stop it before a checkpoint
would be written (status "diverged", ``diverged_step`` in the summary, the last good checkpoint
kept).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lm import faults
from lm.data.shards import atomic_write_json
from lm.model.transformer import TransformerLM
from lm.train.checkpoint import load_checkpoint, read_checkpoint_meta, set_numpy_rng_state
from lm.train.config import TrainConfig, resolve_vocab_size
from lm.train.data import TokenShards, check_device, sampler
from lm.train.loss import cross_entropy
from lm.train.metrics import (
    MetricsLog,
    compute_dtype_name,
    last_logged_losses,
    model_flops_per_token,
    peak_flops,
    throughput,
)
from lm.train.optim import AdamW
from lm.train.resume import check_resume_settings, list_checkpoints, usable_checkpoints
from lm.train.schedule import cosine_lr
from lm.train.strategy import STRATEGIES, SingleDevice, Strategy

EXIT_DIVERGED = 3


@dataclass
class TrainState:
    """What changes from step to step (and what a checkpoint must bring back)."""

    step: int = 0
    tokens_seen: int = 0
    last_loss: float | None = None
    val_loss: float | None = None
    status: str = "completed"
    diverged_step: int | None = None  # the step whose loss, gradient or update was not finite
    changed_on_resume: list[dict] = field(default_factory=list)


@dataclass
class Run:
    """Everything ``setup`` builds; the loop's functions read it."""

    cfg: TrainConfig
    strategy: Strategy
    device: torch.device
    out: Path
    log: Callable[[str], None]
    train_data: TokenShards
    val_data: TokenShards | None
    data_info: dict  # what generation needs to turn ids back into text, recorded in every checkpoint
    model: TransformerLM  # the plain model (checkpoints, parameters)
    run_model: torch.nn.Module  # what forward/backward run on (compiled, wrapped)
    optimizer: torch.optim.Optimizer
    data_rng: np.random.Generator
    amp_dtype: torch.dtype | None
    flops_per_token: int
    peak: float | None
    started: float = field(default_factory=time.time)


# --------------------------------------------------------------------------- setup


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def compile_model(model: TransformerLM, cfg: TrainConfig) -> None:
    """torch.compile in place (state-dict keys unchanged), one graph per model; under FSDP one per
    block's forward, so FSDP's gather/reshard hooks around each block run outside the graph."""
    if cfg.strategy == "fsdp":
        for block in model.layers:
            block.forward = torch.compile(block.forward, fullgraph=True, backend=cfg.compile_backend)
    else:
        model.compile(fullgraph=True, backend=cfg.compile_backend)


def setup(cfg: TrainConfig) -> tuple[Run, TrainState]:
    """Device, strategy, data, model and optimizer for ``cfg``; resumed from out_dir's newest checkpoint."""
    for name in ("data", "out_dir"):
        if not getattr(cfg, name):
            raise ValueError(
                f"{name} is not set: give the token-shard directory (data) and the run directory (out_dir)"
            )
    cfg = resolve_vocab_size(cfg)
    device = resolve_device(cfg.device)
    strategy = STRATEGIES[cfg.strategy](cfg, device)
    device = strategy.device
    out = Path(cfg.out_dir)
    if strategy.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / "checkpoints").glob(".step-*.tmp-*"):  # a run killed while writing a checkpoint
            shutil.rmtree(stale, ignore_errors=True)
    train_data = TokenShards(cfg.data, "train", cfg.model.vocab_size)
    try:
        val_data = TokenShards(cfg.data, "val", cfg.model.vocab_size)
    except ValueError:
        warnings.warn(f"no 'val' shards in {cfg.data}: validation loss is not computed", stacklevel=2)
        val_data = None
    data_info = {key: train_data.manifest.get(key) for key in ("tokenizer", "eot_id", "vocab_size")}
    data_info["manifest"] = str(train_data.dir)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
        torch.backends.cudnn.allow_tf32 = cfg.allow_tf32

    torch.manual_seed(cfg.seed)
    model = TransformerLM(cfg.model).to(device)
    model.checkpoint_blocks = cfg.activation_checkpointing
    optimizer = AdamW(
        model.parameters(),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        impl=cfg.optimizer_impl,
    )
    amp_dtype = autocast_dtype(cfg, device)
    run = Run(
        cfg=cfg,
        strategy=strategy,
        device=device,
        out=out,
        log=_log if strategy.is_main else _quiet,
        train_data=train_data,
        val_data=val_data,
        data_info=data_info,
        model=model,
        run_model=model,
        optimizer=optimizer,
        data_rng=sampler(cfg.seed),
        amp_dtype=amp_dtype,
        flops_per_token=model_flops_per_token(cfg.model),
        peak=peak_flops(device, compute_dtype_name(amp_dtype, cfg.allow_tf32), cfg.peak_flops),
    )
    state = resume(run) if cfg.resume else TrainState()
    if cfg.compile:
        compile_model(model, cfg)
    run.run_model = strategy.wrap(model)
    run.optimizer = strategy.wrap_optimizer(model, optimizer)
    return run, state


def resume(run: Run) -> TrainState:
    """Weights, optimizer state, RNG and data position from the newest usable checkpoint (if any)."""
    checkpoints = usable_checkpoints(run.out, run.log)
    if not checkpoints:
        return TrainState()
    latest = checkpoints[-1]
    meta = read_checkpoint_meta(latest)
    changes = check_resume_settings(meta, run.cfg, latest)  # before any state is touched
    step = load_checkpoint(latest, run.model, run.optimizer)
    cfg = run.cfg
    for group in run.optimizer.param_groups:  # the config's values, not the checkpoint's (they match unless allowed)
        group.update(betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    data_state = meta.get("data") or {}
    if "0" in data_state.get("rng_by_rank", {}):
        set_numpy_rng_state(run.data_rng, data_state["rng_by_rank"]["0"])
    run.log(f"resumed from {latest} at step {step}")
    return TrainState(step=step, tokens_seen=int(data_state.get("tokens_seen", 0)), changed_on_resume=changes)


# --------------------------------------------------------------------------- one step, evaluation, checkpoint


def train_step(run: Run, state: TrainState) -> dict:
    """One optimizer step (grad_accum micro-batches); its metrics line (kind "diverged": not taken)."""
    cfg, strategy = run.cfg, run.strategy
    total = cfg.total_steps()
    lr = cosine_lr(
        state.step,
        cfg.lr,
        cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10,
        cfg.warmup_steps,
        cfg.cosine_steps or total,
    )
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = 0.0
    for micro in range(cfg.grad_accum):
        x, y = strategy.get_batch(run.train_data, cfg.batch_size, cfg.model.context_length, run.device, run.data_rng)
        with strategy.sync_grads(run.run_model, micro == cfg.grad_accum - 1):
            with _autocast(run.device, run.amp_dtype):
                loss = cross_entropy(run.run_model(x), y)  # x, y (B/world, T); loss in float32
                if faults.inject("loss", state.step + 1):  # test-only (lm.faults)
                    loss = loss * float("nan")
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.item()
    faults.inject("backward", state.step + 1)
    grad_norm = strategy.clip_grad_norm_(run.model, cfg.grad_clip).item()
    train_loss = strategy.mean(loss_sum / cfg.grad_accum)
    if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
        run.optimizer.zero_grad(set_to_none=True)
        state.status, state.diverged_step = "diverged", state.step + 1
        run.log(
            f"step {state.step + 1}: loss {train_loss} grad_norm "
            f"{grad_norm} is not finite; stopping, last good checkpoint kept"
        )
        return {"kind": "diverged", "step": state.step + 1, "loss": str(train_loss), "grad_norm": str(grad_norm)}
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if faults.inject("param", state.step + 1):  # test-only: as if the update overflowed
        with torch.no_grad():
            next(run.model.parameters()).view(-1)[0] = float("nan")
    state.step += 1
    state.tokens_seen += cfg.tokens_per_step
    state.last_loss = train_loss
    return {
        "kind": "train",
        "step": state.step,
        "total_steps": total,
        "loss": train_loss,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": state.tokens_seen,
    }


@torch.no_grad()
def evaluate(model, shards: TokenShards, cfg: TrainConfig, device, amp_dtype, strategy=None) -> float:
    """Mean loss over the same ``eval_batches`` validation windows every time (fixed sampler)."""
    model.eval()
    strategy = strategy or SingleDevice(cfg, device)
    rng = np.random.default_rng([cfg.seed, 1_000_003])  # separate from the training stream
    total = 0.0
    for _ in range(cfg.eval_batches):
        x, y = strategy.get_batch(shards, cfg.batch_size, cfg.model.context_length, device, rng)
        with _autocast(device, amp_dtype):
            total += cross_entropy(model(x), y).item()
    model.train()
    return total / cfg.eval_batches


@torch.no_grad()
def weights_finite(model: torch.nn.Module, strategy) -> bool:
    """Every weight finite, on every rank (each checks what it holds; ranks agree through mean)."""
    ok = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return strategy.mean(1.0 if ok else 0.0) == 1.0


def save(run: Run, state: TrainState) -> Path:
    """Checkpoint ``state.step`` (all ranks call; the main rank writes), then keep the newest ``keep_last``."""
    strategy, cfg = run.strategy, run.cfg
    strategy.barrier()
    extra = {"data": run.data_info}
    if state.changed_on_resume:
        extra["changed_on_resume"] = state.changed_on_resume
    path = strategy.save_checkpoint(
        run.model,
        run.optimizer,
        state.step,
        run.out / "checkpoints" / f"step-{state.step:07d}",
        model_config=cfg.model.model_dump(),
        train_config=cfg.model_dump(),
        data_state={"rng_by_rank": {"0": run.data_rng.bit_generator.state}, "tokens_seen": state.tokens_seen},
        extra=extra,
    )
    if strategy.is_main:
        for old in list_checkpoints(run.out)[: -cfg.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    strategy.barrier()
    return path


# --------------------------------------------------------------------------- the loop


def train(config: TrainConfig | dict) -> dict:
    """Run (or resume) training; returns the summary also written to ``out_dir/summary.json``."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    run, state = setup(cfg)
    cfg, total = run.cfg, run.cfg.total_steps()
    metrics = MetricsLog(run.out, state.step, run.strategy.is_main)
    run.log(
        f"training {run.model.num_params():,} non-embedding params on {run.device} ({run.amp_dtype or torch.float32}"
        f"{', compiled' if cfg.compile else ''}) for {total} steps × {cfg.tokens_per_step:,} tokens; "
        f"data {run.train_data.num_tokens:,} tokens"
    )
    progress = (
        tqdm(total=total, initial=state.step, desc="train", unit="step")
        if sys.stderr.isatty() and run.strategy.is_main
        else None
    )
    try:
        while state.step < total:
            t0 = time.time()
            row = train_step(run, state)
            if row["kind"] == "diverged":
                metrics.write(row)
                break
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            row |= throughput(
                cfg.tokens_per_step, time.time() - t0, run.flops_per_token, run.peak, run.strategy.world_size
            )
            metrics.write(row | {"time": round(time.time() - run.started, 3)})
            _report(run, row, progress)
            if not after_step(run, state, metrics):
                break
    finally:
        if progress is not None:
            progress.close()
        metrics.close()
    return finish(run, state, metrics)


def after_step(run: Run, state: TrainState, metrics: MetricsLog) -> bool:
    """Evaluate and checkpoint when due; False when the run must stop here."""
    cfg, step = run.cfg, state.step
    last = step == cfg.total_steps()
    out_of_time = cfg.max_seconds is not None and time.time() - run.started > cfg.max_seconds
    must_save = step % cfg.checkpoint_interval == 0 or last or out_of_time
    if must_save and not weights_finite(run.model, run.strategy):
        # The update itself went non-finite (the loss was finite): never checkpoint it.
        state.status, state.diverged_step = "diverged", step
        metrics.write({"kind": "diverged", "step": step, "reason": "non-finite weights after the optimizer step"})
        run.log(f"step {step}: weights are not finite after the optimizer step; stopping, last good checkpoint kept")
        return False
    if run.val_data is not None and (step % cfg.eval_interval == 0 or last or out_of_time):
        state.val_loss = run.strategy.mean(
            evaluate(run.run_model, run.val_data, cfg, run.device, run.amp_dtype, run.strategy)
        )
        metrics.write({"kind": "eval", "step": step, "val_loss": state.val_loss})
        run.log(f"step {step}: val_loss {state.val_loss:.4f}")
    if must_save:
        save(run, state)
    if out_of_time:
        state.status = "time_limit"
        run.log(f"max_seconds={cfg.max_seconds} reached at step {step}; stopping with a checkpoint")
        return False
    return True


def finish(run: Run, state: TrainState, metrics: MetricsLog) -> dict:
    """The summary (also summary.json on the main rank); closes the strategy."""
    if state.last_loss is None and metrics.path.exists():  # nothing left to do after a resume: the logged values
        state.last_loss, logged_val = last_logged_losses(metrics.path)
        state.val_loss = state.val_loss if state.val_loss is not None else logged_val
    final = list_checkpoints(run.out)
    summary = {
        "status": state.status,
        "steps": state.step,
        "diverged_step": state.diverged_step,
        "tokens": state.tokens_seen,
        "final_train_loss": state.last_loss,
        "final_val_loss": state.val_loss,
        "wall_time_s": round(time.time() - run.started, 3),
        "checkpoint": str(final[-1]) if final else None,
        "metrics": str(metrics.path),
        "out_dir": str(run.out),
        "num_params": run.model.num_params(),
        "flops_per_token": run.flops_per_token,
        "model_config": run.cfg.model.model_dump(),
    }
    if run.strategy.is_main:
        atomic_write_json(run.out / "summary.json", summary)
    run.strategy.close()
    return summary


def _report(run: Run, row: dict, progress) -> None:
    if progress is not None:
        progress.update(1)
        progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}")
    if row["step"] % run.cfg.log_interval == 0 or row["step"] == row["total_steps"]:
        mfu = f" mfu {row['mfu']:.1%}" if row["mfu"] is not None else ""
        run.log(
            f"step {row['step']}/{row['total_steps']} loss {row['loss']:.4f} lr {row['lr']:.3e} "
            f"grad_norm {row['grad_norm']:.3f} tok/s {row['tokens_per_s']:,.0f}{mfu}"
        )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _quiet(msg: str) -> None:  # ranks other than the main one: one rank speaks for all
    pass


def main_exit_code(summary: dict) -> int:
    return EXIT_DIVERGED if summary["status"] == "diverged" else 0


__all__ = [
    "EXIT_DIVERGED",
    "TrainConfig",
    "TrainState",
    "evaluate",
    "list_checkpoints",
    "save",
    "setup",
    "train",
    "train_step",
]
