"""The trainer's distributed seam: the ``Strategy`` protocol, ``SingleDevice``, and the registry.

``TrainConfig.strategy`` names an entry of ``STRATEGIES``: ``none`` (``SingleDevice``, one
process) or one of the data-parallel strategies of ``lm.train.dist_strategy`` (ddp,
ddp_bucketed, zero1, fsdp; started by torchrun). The trainer talks to every one of them through
the methods below and never branches on which it has.

Imports point one way: distributed (engines) ← dist_checkpoint ← dist_strategy ← strategy ←
trainer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lm.train.checkpoint import save_checkpoint
from lm.train.dist_strategy import STRATEGIES as DATA_PARALLEL_STRATEGIES
from lm.train.optim import clip_grad_norm_


@runtime_checkable
class Strategy(Protocol):
    """How one training process takes part in a run (one per rank)."""

    rank: int
    world_size: int
    is_main: bool  # this rank logs and writes files
    device: torch.device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run forward/backward on (DDP wrapper, FSDP-sharded model, or the model)."""

    def wrap_optimizer(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer to step (ZeRO-1 shards it; FSDP rebuilds it over sharded parameters)."""

    def sync_grads(self, model: torch.nn.Module, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-step's forward + backward; gradients are synced after the last one."""

    def mean(self, x: float) -> float:
        """Average a scalar over ranks (losses for logging)."""

    def get_batch(self, shards, batch_size: int, context_length: int, device, rng: np.random.Generator):
        """This rank's rows (x, y) of the global batch; every rank advances ``rng`` alike."""

    def clip_grad_norm_(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        """Global gradient norm over all ranks (clipped to ``max_norm`` when > 0)."""

    def save_checkpoint(self, model, optimizer, iteration: int, out, **kwargs: Any) -> Path:
        """Called on every rank (sharded states are gathered collectively); the main rank writes."""

    def barrier(self) -> None: ...

    def close(self) -> None: ...


class SingleDevice:
    """One process on one device: nothing to wrap, sync or gather."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, cfg, device: torch.device):
        self.device = device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def wrap_optimizer(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer

    def sync_grads(self, model: torch.nn.Module, last_micro_step: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def mean(self, x: float) -> float:
        return x

    def get_batch(self, shards, batch_size: int, context_length: int, device, rng: np.random.Generator):
        return shards.get_batch(batch_size, context_length, device, rng)

    def clip_grad_norm_(self, model: torch.nn.Module, max_norm: float) -> torch.Tensor:
        return clip_grad_norm_(model.parameters(), max_norm)

    def save_checkpoint(self, model, optimizer, iteration: int, out, **kwargs: Any) -> Path:
        return save_checkpoint(model, optimizer, iteration, out, **kwargs)

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


STRATEGIES: dict[str, type] = {"none": SingleDevice, **DATA_PARALLEL_STRATEGIES}

__all__ = ["STRATEGIES", "SingleDevice", "Strategy"]
