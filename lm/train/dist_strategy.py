"""The trainer's distributed strategies: what `strategy: ddp | ddp_bucketed | zero1 | fsdp`
means inside `lm.train.trainer.train`.

A strategy implements `lm.train.strategy.Strategy` (the seam; `SingleDevice` is the one-process one): it joins
the process group torchrun set up, wraps the model, swaps the optimizer for its sharded
form, hands each rank its slice of the batch, syncs gradients on the last micro-step,
averages logged scalars, and writes consolidated checkpoints. Started without torchrun it
is a world of one and trains exactly like `none`.

    torchrun --nproc-per-node 2 -m lm.train --config run.yaml --set strategy=ddp

Batches are global: every rank draws the same `batch_size` windows from one shared data
stream and keeps rows [rank·B/W, (rank+1)·B/W). So the same config gives the same losses at
any world size, and a run checkpointed at world size 2 resumes at 1 (or the other way) on
exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lm.train.dist_checkpoint import load_consolidated_state_dicts, save_distributed_checkpoint
from lm.train.distributed import (
    ShardedOptimizer,
    destroy_distributed,
    init_distributed,
    optimizer_hyperparameters,
    wrap_model,
)
from lm.train.optim import clip_grad_norm_


class DataParallelStrategy:
    """One process per device, started by torchrun; `name` picks the engine."""

    name = "ddp"

    def __init__(self, cfg, device: torch.device):
        if device.type == "cuda":  # one GPU per rank: LOCAL_RANK picks it
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.env = init_distributed(device=str(device), always=self.name == "fsdp")
        self.rank, self.world_size, self.device = self.env.rank, self.env.world_size, self.env.device
        self.is_main = self.env.is_main
        if cfg.batch_size % self.world_size:
            raise ValueError(
                f"batch_size={cfg.batch_size} must be divisible by the world size {self.world_size} "
                f"(each rank takes batch_size / world_size sequences)"
            )
        self.bucket_size_mb = getattr(cfg, "bucket_size_mb", 25.0)
        # FSDP computes in bf16 where the trainer would autocast to bf16, else fp32.
        bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and self.device.type == "cuda")
        self.fsdp_param_dtype = "bf16" if bf16 else "fp32"

    # -- model and optimizer

    def wrap(self, model: nn.Module) -> nn.Module:
        return wrap_model(model, self.name, bucket_size_mb=self.bucket_size_mb, fsdp_param_dtype=self.fsdp_param_dtype)

    def wrap_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Rebuild `optimizer` (already holding any resumed state) for this strategy: sharded
        under zero1; over the sharded parameters under fsdp (which replaced them)."""
        if self.name == "zero1":
            sharded = ShardedOptimizer(model.parameters(), type(optimizer), **optimizer_hyperparameters(optimizer))
            sharded.load_state_dict(optimizer.state_dict())
            return sharded
        if self.name == "fsdp":
            full = optimizer.state_dict()
            rebuilt = type(optimizer)(model.parameters(), **optimizer_hyperparameters(optimizer))
            if full["state"]:
                load_consolidated_state_dicts(model, rebuilt, None, full)
            for group, saved in zip(rebuilt.param_groups, full["param_groups"]):
                group.update({k: v for k, v in saved.items() if k != "params"})
            return rebuilt
        return optimizer

    # -- data

    def get_batch(self, shards, batch_size: int, context_length: int, device, rng) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the global batch (B/W, T) each; all ranks advance `rng` alike."""
        x, y = shards.get_batch(batch_size, context_length, "cpu", rng)  # (B, T) each
        n = batch_size // self.world_size
        rows = slice(self.rank * n, (self.rank + 1) * n)
        return x[rows].to(device), y[rows].to(device)

    # -- gradients and scalars

    @contextlib.contextmanager
    def sync_grads(self, model: nn.Module, last_micro_step: bool):
        """Wraps one micro-step's forward + backward; only the last one communicates."""
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(last_micro_step)
        else:
            model.require_sync = last_micro_step
        yield
        if last_micro_step:
            model.finish_gradient_synchronization()

    def mean(self, x: float) -> float:
        if self.world_size == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world_size

    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Global gradient norm (and clipping). After DDP every rank holds the full averaged
        gradients; FSDP's are DTensor shards, whose norm torch's clip_grad_norm_ reduces
        across ranks."""
        if self.name != "fsdp":
            return clip_grad_norm_(model.parameters(), max_norm)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    # -- files

    def save_checkpoint(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int, out: str | os.PathLike, **kwargs: Any
    ) -> Path:
        """All ranks call (consolidation is collective); rank 0 writes."""
        return save_distributed_checkpoint(model, optimizer, iteration, out, **kwargs)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        destroy_distributed()


def _named(name: str) -> type[DataParallelStrategy]:
    return type(f"{name.title().replace('_', '')}Strategy", (DataParallelStrategy,), {"name": name})


STRATEGIES: dict[str, type[DataParallelStrategy]] = {n: _named(n) for n in ("ddp", "ddp_bucketed", "zero1", "fsdp")}
