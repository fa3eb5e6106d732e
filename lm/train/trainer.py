"""The training loop: TrainConfig in, checkpoints + metrics out; resumable to the exact same losses.

    python -m lm.train --config configs/train-demo.yaml --set max_steps=200 --set out_dir=runs/demo
    # in-process (what scaling sweeps do):
    from lm.train.trainer import TrainConfig, train
    summary = train(TrainConfig(model=..., data="outputs/tokenize/<fp>", out_dir="runs/x", max_steps=100))

Reads a token-shard directory (``_manifest.json`` + ``.bin`` shards, see ``lm.train.data``).
Writes into ``out_dir``::

    checkpoints/step-0000100/   model.safetensors, optimizer.safetensors, meta.json (last ``keep_last`` kept)
    metrics.jsonl               one line per step (loss, lr, grad_norm, tokens/s, MFU) and per eval (val_loss)
    summary.json                what ``train`` returns
    tb/                         TensorBoard events, only if tensorboard is installed

Resuming: with ``resume`` (default) a run restarts from the newest checkpoint in ``out_dir``;
weights, AdamW state, RNG states and the data sampler's state come back, and metrics lines past
that step are dropped, so an interrupted run logs exactly what an uninterrupted one does.
A non-finite loss or gradient norm stops the run before the optimizer step, and non-finite
weights stop it before a checkpoint would be written (status "diverged", ``diverged_step`` in
the summary, the last good checkpoint kept).

Distributed seam: ``strategy`` names an entry of ``STRATEGIES``; ``SingleDevice`` is the
default. A distributed strategy (lm/train/distributed.py) supplies rank/world size, wraps the
model, syncs gradients on the last micro-step and says which rank writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from lm.config import Config
from lm.model.transformer import ModelConfig, TransformerLM
from lm.train import faults
from lm.train.checkpoint import (
    CheckpointCorruptError, load_checkpoint, read_checkpoint_meta, save_checkpoint, set_numpy_rng_state, verify_checkpoint,
)
from lm.train.data import TokenShards, check_device, sampler
from lm.train.loss import cross_entropy
from lm.train.optim import AdamW, clip_grad_norm_
from lm.train.schedule import cosine_lr

EXIT_DIVERGED = 3
# Dense bf16 peak FLOP/s by device name fragment, for the MFU estimate.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


class TrainConfig(Config):
    """Everything a training run needs; also the form of the pretrain flow's training part."""

    model: ModelConfig = Field(description="Shape of the Transformer to train.")
    data: str | None = Field(None, description="Token-shard directory (holding _manifest.json) from the tokenize stage.")
    out_dir: str | None = Field(None, description="Run directory: checkpoints/, metrics.jsonl, summary.json.")
    batch_size: int = Field(16, gt=0, le=1 << 16, description="Sequences per micro-batch, all ranks together (each rank takes batch_size / world_size).")
    grad_accum: int = Field(1, gt=0, le=1 << 16, description="Micro-batches accumulated per optimizer step.")
    max_steps: int | None = Field(None, gt=0, le=1000000000, description="Optimizer steps to run (give this or max_tokens).")
    max_tokens: int | None = Field(None, gt=0, le=10**15, description="Training tokens to consume; converted to steps.")
    max_seconds: float | None = Field(None, gt=0, description="Stop early (with a checkpoint) after this much wall time.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    min_lr: float | None = Field(None, ge=0, description="Final learning rate of the cosine (default lr/10).")
    warmup_steps: int = Field(0, ge=0, le=1000000000, description="Linear warmup steps.")
    cosine_steps: int | None = Field(None, gt=0, le=1000000000, description="Step where the cosine reaches min_lr (default: the last step).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW β1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW β2.")
    eps: float = Field(1e-8, gt=0, description="AdamW ε.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = off).")
    eval_interval: int = Field(100, gt=0, le=1000000000, description="Steps between validation-loss evaluations.")
    eval_batches: int = Field(10, gt=0, le=1_000_000, description="Micro-batches per validation-loss evaluation.")
    checkpoint_interval: int = Field(100, gt=0, le=1000000000, description="Steps between checkpoints (the last step is always saved).")
    keep_last: int = Field(2, gt=0, le=10_000, description="Checkpoints kept; older ones are deleted.")
    log_interval: int = Field(10, gt=0, le=1000000000, description="Steps between log lines on stdout.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the initial weights and the data sampler.")
    device: str = Field("auto", description="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:N', 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="Autocast dtype; auto = bfloat16 on CUDA, float32 elsewhere.")
    compile: bool = Field(False, description="torch.compile the model (needs a C++ compiler on CPU).")
    resume: bool = Field(True, description="Resume from the newest checkpoint in out_dir when there is one.")
    peak_flops: float | None = Field(None, gt=0, description="Device peak FLOP/s for MFU (default: looked up for known GPUs).")
    strategy: str = Field("none", description="Parallelism: 'none' (one device) or a name from lm.train.distributed.")
    bucket_size_mb: float = Field(25.0, gt=0, description="Gradient bucket size (MB) of strategies ddp_bucketed and zero1.")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in strategies():
            raise ValueError(f"unknown strategy {v!r}; choose one of {sorted(strategies())}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("give max_steps or max_tokens (how long to train)")
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is above lr={self.lr}")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.model.context_length

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.max_tokens / self.tokens_per_step))


# --------------------------------------------------------------------------- strategies (the distributed seam)


class SingleDevice:
    """One process on one device. Distributed strategies implement the same methods."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.device = device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def sync_grads(self, model: torch.nn.Module, last_micro_step: bool):
        """Context for one micro-step's backward; DDP skips the all-reduce until the last one."""
        return contextlib.nullcontext()

    def mean(self, x: float) -> float:
        """Average a scalar over ranks (losses for logging)."""
        return x

    def wrap_optimizer(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer to step (ZeRO-1 shards it; FSDP rebuilds it over sharded parameters)."""
        return optimizer

    def get_batch(self, shards: TokenShards, batch_size: int, context_length: int, device, rng):
        """This rank's rows of the global batch; every rank advances ``rng`` alike."""
        return shards.get_batch(batch_size, context_length, device, rng)

    def clip_grad_norm_(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        return clip_grad_norm_(model.parameters(), max_norm)

    def save_checkpoint(self, model, optimizer, iteration: int, out, **kwargs) -> Path:
        """Called on every rank (sharded states are gathered collectively); the main rank writes."""
        return save_checkpoint(model, optimizer, iteration, out, **kwargs)

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def strategies() -> dict[str, type]:
    found = {"none": SingleDevice}
    try:
        from lm.train import distributed  # added by the distributed issue

        found.update(getattr(distributed, "STRATEGIES", {}))
    except ImportError:
        pass
    return found


# --------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def peak_flops(cfg: TrainConfig, device: torch.device) -> float | None:
    if cfg.peak_flops:
        return cfg.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for frag, flops in PEAK_FLOPS.items():
            if frag in name:
                return flops
    return None


_STEP_DIR = re.compile(r"^step-(\d+)$")


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Finished checkpoints (those with meta.json), oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "meta.json").exists()]
    return [p for _, p in sorted(found)]


def usable_checkpoints(out_dir: str | Path, log=print) -> list[Path]:
    """Finished checkpoints, oldest first, after setting aside corrupt ones from the newest end.

    A damaged newest checkpoint (flipped bytes, truncation) is renamed ``step-N.corrupt`` and
    the run resumes from the one before it (or from scratch): resuming is exact, so the
    recomputed steps give the same weights the damaged checkpoint held."""
    found = list_checkpoints(out_dir)
    while found:
        try:
            verify_checkpoint(found[-1])
            break
        except (CheckpointCorruptError, FileNotFoundError) as e:
            bad = found.pop()
            aside = bad.with_name(f"{bad.name}.corrupt")
            shutil.rmtree(aside, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):  # another rank moved it already
                os.replace(bad, aside)
            log(f"checkpoint {bad} is damaged ({e}); set aside as {aside.name}, resuming from "
                f"{found[-1].name if found else 'scratch'}")
    return found


class MetricsLog:
    """metrics.jsonl (append; on resume, lines past the resumed step are dropped) + optional TensorBoard."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool):
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step_of(ln) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1)
        except ImportError:  # tensorboard not installed: JSONL only
            self.tb = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(f"{row.get('kind', 'train')}/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def last_logged_losses(path: Path) -> tuple[float | None, float | None]:
    """(last train loss, last val loss) in a metrics.jsonl."""
    train_loss = val_loss = None
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "train":
            train_loss = row["loss"]
        elif row.get("kind") == "eval":
            val_loss = row["val_loss"]
    return train_loss, val_loss


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return 1 << 62  # a torn last line from a killed run: drop it


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


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- the loop


def train(config: TrainConfig | dict) -> dict:
    """Run (or resume) training; returns the summary also written to ``out_dir/summary.json``."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    for field in ("data", "out_dir"):
        if not getattr(cfg, field):
            raise ValueError(f"{field} is not set: give the token-shard directory (data) and the run directory (out_dir)")
    device = resolve_device(cfg.device)
    strategy = strategies()[cfg.strategy](cfg, device)
    device = getattr(strategy, "device", device)
    log = _log if strategy.is_main else (lambda msg: None)  # one rank speaks for all
    out = Path(cfg.out_dir)
    if strategy.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # a run killed while writing a checkpoint leaves its temporary directory behind
        for stale in (out / "checkpoints").glob(".step-*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    train_data = TokenShards(cfg.data, "train", cfg.model.vocab_size)
    try:
        val_data = TokenShards(cfg.data, "val", cfg.model.vocab_size)
    except ValueError:
        warnings.warn(f"no 'val' shards in {cfg.data}: validation loss is not computed", stacklevel=2)
        val_data = None
    # what generation needs to turn ids back into text, recorded in every checkpoint
    data_info = {key: train_data.manifest.get(key) for key in ("tokenizer", "eot_id", "vocab_size")}
    data_info["manifest"] = str(train_data.dir)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(cfg.seed)
    model = TransformerLM(cfg.model).to(device)
    optimizer = AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)
    data_rng = sampler(cfg.seed)  # one stream: every rank draws the global batch and keeps its rows
    step, tokens_seen = 0, 0
    checkpoints = usable_checkpoints(out, log) if cfg.resume else []
    if checkpoints:
        latest = checkpoints[-1]
        step = load_checkpoint(latest, model, optimizer)
        data_state = read_checkpoint_meta(latest).get("data") or {}
        ranks = data_state.get("rng_by_rank", {})
        if "0" in ranks:
            set_numpy_rng_state(data_rng, ranks["0"])
        tokens_seen = int(data_state.get("tokens_seen", 0))
        log(f"resumed from {latest} at step {step}")

    run_model = strategy.wrap(torch.compile(model) if cfg.compile else model)
    optimizer = strategy.wrap_optimizer(model, optimizer)
    amp_dtype = autocast_dtype(cfg, device)
    total_steps = cfg.total_steps()
    cosine_steps = cfg.cosine_steps or total_steps
    min_lr = cfg.min_lr if cfg.min_lr is not None else cfg.lr / 10
    flops_per_token = model.flops_per_token()
    peak = peak_flops(cfg, device)
    metrics = MetricsLog(out, step, strategy.is_main)
    ctx = cfg.model.context_length
    status, last_loss, val_loss, diverged_step = "completed", None, None, None
    started = time.time()
    log(
        f"training {model.num_params():,} non-embedding params on {device} ({amp_dtype or torch.float32}) "
        f"for {total_steps} steps × {cfg.tokens_per_step:,} tokens; data {train_data.num_tokens:,} tokens"
    )
    progress = None
    if sys.stderr.isatty() and strategy.is_main:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc="train", unit="step")

    def save(at: int) -> Path | None:
        strategy.barrier()
        path = strategy.save_checkpoint(
            model, optimizer, at, out / "checkpoints" / f"step-{at:07d}",
            model_config=cfg.model.model_dump(), train_config=cfg.model_dump(),
            data_state={"rng_by_rank": {"0": data_rng.bit_generator.state}, "tokens_seen": tokens_seen},
            extra={"data": data_info},
        )
        if strategy.is_main:
            for old in list_checkpoints(out)[: -cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        strategy.barrier()
        return path

    try:
        while step < total_steps:
            t0 = time.time()
            lr = cosine_lr(step, cfg.lr, min_lr, cfg.warmup_steps, cosine_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                x, y = strategy.get_batch(train_data, cfg.batch_size, ctx, device, data_rng)  # (B/world, T) each
                with strategy.sync_grads(run_model, micro == cfg.grad_accum - 1):
                    with _autocast(device, amp_dtype):
                        loss = cross_entropy(run_model(x), y)
                        if faults.inject("loss", step + 1):  # test-only (lm.train.faults)
                            loss = loss * float("nan")
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.item()
            faults.inject("backward", step + 1)
            grad_norm = strategy.clip_grad_norm_(model, cfg.grad_clip).item()
            train_loss = strategy.mean(loss_sum / cfg.grad_accum)
            if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
                status, diverged_step = "diverged", step + 1
                metrics.write({"kind": "diverged", "step": step + 1, "loss": str(train_loss), "grad_norm": str(grad_norm)})
                log(f"step {step + 1}: loss {train_loss} grad_norm {grad_norm} is not finite; stopping, last good checkpoint kept")
                optimizer.zero_grad(set_to_none=True)
                break
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if faults.inject("param", step + 1):  # test-only: as if the update overflowed
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("nan")
            step += 1
            tokens_seen += cfg.tokens_per_step
            last_loss = train_loss
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = max(time.time() - t0, 1e-9)
            tps = cfg.tokens_per_step / dt
            mfu = flops_per_token * tps / (peak * strategy.world_size) if peak else None
            metrics.write({"kind": "train", "step": step, "loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                           "tokens": tokens_seen, "tokens_per_s": round(tps, 1), "mfu": mfu, "time": round(time.time() - started, 3)})
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}")
            if step % cfg.log_interval == 0 or step == total_steps:
                log(f"step {step}/{total_steps} loss {train_loss:.4f} lr {lr:.3e} grad_norm {grad_norm:.3f} "
                     f"tok/s {tps:,.0f}" + (f" mfu {mfu:.1%}" if mfu is not None else ""))
            out_of_time = cfg.max_seconds is not None and time.time() - started > cfg.max_seconds
            must_save = step % cfg.checkpoint_interval == 0 or step == total_steps or out_of_time
            if must_save and not weights_finite(model, strategy):
                # The update itself went non-finite (the loss was finite): never checkpoint it.
                status, diverged_step = "diverged", step
                metrics.write({"kind": "diverged", "step": step, "reason": "non-finite weights after the optimizer step"})
                log(f"step {step}: weights are not finite after the optimizer step; stopping, last good checkpoint kept")
                break
            if val_data is not None and (step % cfg.eval_interval == 0 or step == total_steps or out_of_time):
                val_loss = strategy.mean(evaluate(run_model, val_data, cfg, device, amp_dtype, strategy))
                metrics.write({"kind": "eval", "step": step, "val_loss": val_loss})
                log(f"step {step}: val_loss {val_loss:.4f}")
            if must_save:
                save(step)
            if out_of_time:
                status = "time_limit"
                log(f"max_seconds={cfg.max_seconds} reached at step {step}; stopping with a checkpoint")
                break
    finally:
        if progress is not None:
            progress.close()
        metrics.close()

    if last_loss is None and metrics.path.exists():  # nothing left to do after a resume: report the logged values
        last_loss, logged_val = last_logged_losses(metrics.path)
        val_loss = val_loss if val_loss is not None else logged_val
    final = list_checkpoints(out)
    summary = {
        "status": status,
        "steps": step,
        "diverged_step": diverged_step,  # the step whose loss, gradient or update was not finite
        "tokens": tokens_seen,
        "final_train_loss": last_loss,
        "final_val_loss": val_loss,
        "wall_time_s": round(time.time() - started, 3),
        "checkpoint": str(final[-1]) if final else None,
        "metrics": str(metrics.path),
        "out_dir": str(out),
        "num_params": model.num_params(),
        "flops_per_token": flops_per_token,
        "model_config": cfg.model.model_dump(),
    }
    if strategy.is_main:
        from lm.data.shards import atomic_write_json

        atomic_write_json(out / "summary.json", summary)
    strategy.close()
    return summary


def main_exit_code(summary: dict) -> int:
    return EXIT_DIVERGED if summary["status"] == "diverged" else 0


__all__ = ["TrainConfig", "train", "SingleDevice", "strategies", "list_checkpoints", "EXIT_DIVERGED"]
