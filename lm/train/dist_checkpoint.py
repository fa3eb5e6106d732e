"""Consolidated checkpoints for every training strategy: one file set, any world size.

Each strategy keeps its state differently (DDP: full copies on every rank; ZeRO-1: optimizer
state split across ranks; FSDP2: parameters and state split across ranks as DTensors). A
checkpoint always holds what one unsharded process would hold, in the format of
`lm.train.checkpoint` (model.safetensors + optimizer.safetensors + meta.json), so a run
saved at world size 2 resumes at world size 1 and the other way round.

    save_distributed_checkpoint(model, optimizer, it, out, ...)   # all ranks call; rank 0 writes
    it, optim_sd = read_distributed_checkpoint(src, plain_model)  # before wrapping: weights in
    ...wrap the model, build the optimizer...
    load_consolidated_state_dicts(model, optimizer, None, optim_sd)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lm.train.checkpoint import load_checkpoint, save_checkpoint
from lm.train.distributed import DataParallel, rank_and_world_size


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside our DDP wrappers (FSDP2 shards in place: no wrapper)."""
    return model.module if isinstance(model, DataParallel) else model


def _is_fsdp(model: nn.Module) -> bool:
    if "torch.distributed.fsdp" not in sys.modules:  # nothing was sharded in this process
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _param_names(model: nn.Module) -> list[str]:
    # named_parameters() dedups tied weights, in the same order as parameters(), which is
    # the order the optimizer saw them in.
    return [n for n, p in model.named_parameters() if p.requires_grad]


def consolidated_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict) as one unsharded process would have them,
    on CPU; keys are the plain module's names and the optimizer's integer indices, so a
    checkpoint written at one world size loads at any other. Collective: all ranks call it.
    Under FSDP only rank 0 receives the tensors (others get empty dicts): the full model is
    gathered into CPU memory, never onto one GPU.
    """
    inner = unwrap(model)
    if _is_fsdp(inner):
        from torch.distributed.checkpoint.state_dict import (  # slow to import (seconds): only under FSDP
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = {k: v.detach().cpu() for k, v in get_model_state_dict(inner, options=opts).items()}
        osd = get_optimizer_state_dict(inner, optimizer, options=opts)
        index = {n: i for i, n in enumerate(_param_names(inner))}
        state = {
            index[n]: {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in s.items()}
            for n, s in osd.get("state", {}).items()
        }
        groups = [g | {"params": [index[n] for n in g["params"]]} for g in osd.get("param_groups", [])]
        return msd, {"state": dict(sorted(state.items())), "param_groups": groups}
    msd = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    osd = optimizer.state_dict()  # ShardedOptimizer consolidates here
    osd = {
        "state": {
            i: {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in s.items()} for i, s in osd["state"].items()
        },
        "param_groups": osd["param_groups"],
    }
    return msd, osd


def load_consolidated_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict, optimizer_sd: dict | None
) -> None:
    """Inverse of consolidated_state_dicts, at this run's world size (every rank passes the
    full dicts, read from the same checkpoint). `model_sd=None` loads the optimizer only."""
    inner = unwrap(model)
    if _is_fsdp(inner):
        from torch.distributed.checkpoint.state_dict import (  # slow to import (seconds): only under FSDP
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        if model_sd is not None:
            set_model_state_dict(inner, model_sd, options=opts)
        if optimizer is not None and optimizer_sd is not None:
            names = _param_names(inner)
            osd = {
                "state": {names[i]: s for i, s in optimizer_sd["state"].items()},
                "param_groups": [g | {"params": [names[i] for i in g["params"]]} for g in optimizer_sd["param_groups"]],
            }
            set_optimizer_state_dict(inner, optimizer, osd, options=opts)
        return
    if model_sd is not None:
        inner.load_state_dict(model_sd)
    if optimizer is not None and optimizer_sd is not None:
        optimizer.load_state_dict(optimizer_sd)


class _Snapshot:
    """Stands in for a model or optimizer whose state was already consolidated, so
    `save_checkpoint` (which calls `.state_dict()`) writes it unchanged."""

    def __init__(self, state: dict, config: Any = None):
        self._state = state
        if config is not None:
            self.config = config

    def state_dict(self) -> dict:
        return self._state

    def load_state_dict(self, state: dict) -> None:  # used by read_distributed_checkpoint
        self._state = state


def save_distributed_checkpoint(
    model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int, out: str | os.PathLike, **kwargs: Any
) -> Path:
    """Consolidate on all ranks (collective), write on rank 0, then wait for it.
    `kwargs` go to `lm.train.checkpoint.save_checkpoint` (configs, data_state, extra)."""
    rank, world = rank_and_world_size()
    msd, osd = consolidated_state_dicts(model, optimizer)
    if rank == 0:
        plain = unwrap(model)
        save_checkpoint(_Snapshot(msd, getattr(plain, "config", None)), _Snapshot(osd), iteration, out, **kwargs)
    if world > 1:
        dist.barrier()  # nobody reads or overwrites the checkpoint before rank 0 is done
    return Path(out)


def read_distributed_checkpoint(
    src: str | os.PathLike, model: nn.Module, *, restore_rng: bool = True
) -> tuple[int, dict]:
    """Load weights into the plain (not yet wrapped or sharded) `model` on this rank and
    return (iteration, consolidated optimizer state) for `load_consolidated_state_dicts`
    once the optimizer exists."""
    holder = _Snapshot({})
    iteration = load_checkpoint(src, model, holder, restore_rng=restore_rng)
    return iteration, holder.state_dict()
