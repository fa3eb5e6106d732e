"""Data-parallel and sharded training on torch.distributed: our DDP, ZeRO-1, and FSDP2.

Every rank runs the same program (started by `torchrun`, which sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT); this module turns a plain model and optimizer into
their data-parallel versions. Strategies (the trainer's `strategy` setting):

    none          one process, nothing wrapped
    ddp           DDPIndividualParameters: one async all-reduce per parameter, launched by
                  a hook the moment that parameter's gradient is accumulated, so
                  communication overlaps the rest of the backward pass
    ddp_bucketed  DDPBucketed: parameters grouped (in reverse order, the order backward
                  produces their gradients) into buckets of `bucket_size_mb`; one all-reduce
                  per full bucket, fewer and larger messages
    zero1         DDPBucketed for gradients + ShardedOptimizer: each rank keeps optimizer
                  state for its shard of parameters only, steps it, and broadcasts them
    fsdp          torch.distributed.fsdp.fully_shard (FSDP2) per Transformer block + root,
                  with a mixed-precision policy (bf16 compute, fp32 reduce)

The training loop is the same for all of them:

    loss.backward()
    model.finish_gradient_synchronization()   # DDP wrappers: wait on in-flight all-reduces
    optimizer.step()

Backend: nccl when CUDA is available, gloo otherwise (CPU tests, laptops). gloo has no
AVG reduction, so gradients are divided by the world size before a SUM all-reduce.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

STRATEGY_NAMES = ("none", "ddp", "ddp_bucketed", "zero1", "fsdp")


# ----------------------------------------------------------------------------- process group


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its global rank, the number of ranks, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None, device: str | None = None, *, always: bool = False) -> DistEnv:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun) and join the process group.

    Without those variables (plain `python -m lm.train`) this is a world of one and no
    process group is created, unless `always` (FSDP needs one even alone): then a group
    of one on a free local port. `device` overrides the default choice (cuda:LOCAL_RANK
    when CUDA is available, else cpu).
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        # Each rank owns one GPU; collectives on the wrong device deadlock under nccl.
        torch.cuda.set_device(dev)
    if always and world_size == 1 and "MASTER_ADDR" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    if (world_size > 1 or always) and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_rank(rank: int, fn, world_size: int, store_file: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    device = f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    # A file rendezvous: no TCP port to pick, so no race with other programs for it.
    dist.init_process_group(
        backend="nccl" if device != "cpu" else "gloo",
        init_method=f"file://{store_file}",
        rank=rank,
        world_size=world_size,
    )
    env = init_distributed(device=device)  # the group exists: this only describes the rank
    try:
        fn(env, *args)
    finally:
        destroy_distributed()
    exit_without_teardown(0)


def exit_without_teardown(code: int) -> None:
    """Leave a rank process once its work and the process group are finished.

    With gloo on CPU, an interpreter teardown after ``destroy_process_group`` sometimes dies
    in C++ ("terminate called without an active exception", SIGABRT): a background thread
    is destroyed while still joinable. Nothing is left to run or to flush at this point, so
    the rank exits at once instead of tearing the interpreter down.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_local(fn, world_size: int, *args: Any) -> None:
    """Run `fn(env: DistEnv, *args)` in `world_size` fresh local processes joined in one
    process group (tests, notebooks, benchmarks; training proper goes through torchrun).
    `fn` must be importable (module level). An exception in any rank is raised here."""
    with tempfile.TemporaryDirectory(prefix="lmpipe-dist-") as tmp:
        mp.spawn(_run_rank, args=(fn, world_size, os.path.join(tmp, "store"), args), nprocs=world_size, join=True)


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unique_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters, each once: a tied weight (embedding = lm_head) is one Parameter
    object that appears under two names; syncing it twice would halve its gradient twice."""
    seen: set[int] = set()
    out = []
    for p in module.parameters():  # parameters() already dedups by identity; be explicit
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make every rank start from rank `src`'s parameters and buffers."""
    _, world = rank_and_world_size()
    if world == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)


# ----------------------------------------------------------------------------- DDP


class DataParallel(nn.Module):
    """Shared part of our DDP wrappers: broadcast at start, forward passes through (``.module``
    is the user's model)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.rank, self.world_size = rank_and_world_size()
        broadcast_module(module)
        self.params = unique_parameters(module)
        # False during gradient accumulation's inner micro-steps: gradients keep summing
        # locally and only the last backward communicates.
        self.require_sync = True

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def finish_gradient_synchronization(self) -> None:
        raise NotImplementedError


class DDPNaive(DataParallel):
    """Baseline: after backward, all-reduce every gradient, one blocking call each.

    Nothing overlaps with compute; kept for the benchmark (bench/ddp.py)."""

    def finish_gradient_synchronization(self) -> None:
        if self.world_size == 1 or not self.require_sync:
            return
        for p in self.params:
            if p.grad is not None:
                p.grad.div_(self.world_size)
                dist.all_reduce(p.grad)


class DDPIndividualParameters(DataParallel):
    """All-reduce each parameter's gradient asynchronously as soon as it is accumulated.

    `register_post_accumulate_grad_hook` fires once per Parameter per backward, after all
    its uses (a tied weight's two uses included) have been summed into `.grad`, which is
    what makes tied weights sync exactly once.
    """

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self._handles: list[dist.Work] = []
        if self.world_size > 1:
            for p in self.params:
                p.register_post_accumulate_grad_hook(self._on_grad_ready)

    def _on_grad_ready(self, p: torch.Tensor) -> None:
        if not self.require_sync:
            return
        p.grad.div_(self.world_size)
        self._handles.append(dist.all_reduce(p.grad, async_op=True))

    def finish_gradient_synchronization(self) -> None:
        for h in self._handles:
            h.wait()
        self._handles.clear()


class _Bucket:
    """Parameters whose gradients travel in one flat all-reduce."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.num_ready = 0
        self.flat: torch.Tensor | None = None
        self.handle: dist.Work | None = None

    def launch(self, world_size: int) -> None:
        # A parameter unused this step has no grad; send zeros so every rank's flat buffers
        # line up (all ranks must issue the same collectives with the same sizes).
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self.flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numels,)
        self.flat.div_(world_size)
        self.handle = dist.all_reduce(self.flat, async_op=True)

    def finish(self) -> None:
        assert self.handle is not None and self.flat is not None
        self.handle.wait()
        offset = 0
        for p in self.params:
            n = p.numel()
            g = self.flat[offset : offset + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            offset += n
        self.flat, self.handle, self.num_ready = None, None, 0


class DDPBucketed(DataParallel):
    """All-reduce gradients in buckets of at most `bucket_size_mb` (a parameter larger than
    that gets a bucket of its own).

    Parameters are assigned in reverse registration order, which is roughly the order
    backward produces gradients (output layer first), so the first bucket fills early and
    its all-reduce overlaps the backward pass of earlier layers.
    """

    def __init__(self, module: nn.Module, bucket_size_mb: float = 25.0):
        if bucket_size_mb <= 0:
            raise ValueError(f"bucket_size_mb must be > 0, got {bucket_size_mb}")
        super().__init__(module)
        self.bucket_size_bytes = bucket_size_mb * 1024 * 1024
        self.buckets: list[_Bucket] = []
        current: list[nn.Parameter] = []
        current_bytes = 0
        for p in reversed(self.params):
            nbytes = p.numel() * p.element_size()
            if current and current_bytes + nbytes > self.bucket_size_bytes:
                self.buckets.append(_Bucket(current))
                current, current_bytes = [], 0
            current.append(p)
            current_bytes += nbytes
        if current:
            self.buckets.append(_Bucket(current))
        self._bucket_of = {id(p): b for b in self.buckets for p in b.params}
        if self.world_size > 1:
            for p in self.params:
                p.register_post_accumulate_grad_hook(self._on_grad_ready)

    def _on_grad_ready(self, p: torch.Tensor) -> None:
        if not self.require_sync:
            return
        bucket = self._bucket_of[id(p)]
        bucket.num_ready += 1
        if bucket.num_ready == len(bucket.params):
            bucket.launch(self.world_size)

    def finish_gradient_synchronization(self) -> None:
        if self.world_size == 1 or not self.require_sync:
            return
        for b in self.buckets:
            if b.handle is None:  # some parameter got no gradient this step
                b.launch(self.world_size)
            b.finish()


# ----------------------------------------------------------------------------- ZeRO-1


class ShardedOptimizer(torch.optim.Optimizer):
    """ZeRO stage 1: wrap any optimizer class so each rank holds state for its shard only.

    Parameters are assigned to ranks greedily by size (largest first, to the least-loaded
    rank) so shards are balanced. `step()` steps the local shard, then each owner
    broadcasts its updated parameters. Gradients must already be averaged across ranks
    (use a DDP wrapper). `param_groups` lists every parameter, so a learning-rate schedule
    that sets `group["lr"]` works unchanged; the values are copied into the local
    optimizer before each step.

    `state_dict()` is consolidated (the same as the unsharded optimizer's, so a checkpoint
    resumes at any world size) and is a collective call: every rank must call it.
    `load_state_dict()` takes a consolidated dict and keeps this rank's shard.
    """

    def __init__(self, params: Iterable, optimizer_cls: type[torch.optim.Optimizer], **kwargs: Any):
        self.rank, self.world_size = rank_and_world_size()
        self.optimizer_cls, self.optimizer_kwargs = optimizer_cls, kwargs
        self.owner: dict[int, int] = {}  # id(param) -> rank that steps it
        self._load = [0] * self.world_size
        self.local: torch.optim.Optimizer | None = None
        super().__init__(params, dict(kwargs))  # calls add_param_group per group

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in sorted(group["params"], key=lambda t: -t.numel()):
            r = min(range(self.world_size), key=lambda i: (self._load[i], i))
            self.owner[id(p)] = r
            self._load[r] += p.numel()
        mine = [p for p in group["params"] if self.owner[id(p)] == self.rank]
        local_group = {k: v for k, v in group.items() if k != "params"} | {"params": mine}
        if self.local is None:
            self.local = self.optimizer_cls([local_group], **self.optimizer_kwargs)
        else:
            self.local.add_param_group(local_group)
        # The wrapped class fills in its own defaults (betas, eps, ...): show them here too,
        # so param_groups and state_dict() look exactly like the unsharded optimizer's.
        for k, v in self.local.param_groups[-1].items():
            group.setdefault(k, v)

    def _sync_hyperparameters(self) -> None:
        for outer, inner in zip(self.param_groups, self.local.param_groups):
            for k, v in outer.items():
                if k != "params":
                    inner[k] = v

    @torch.no_grad()
    def step(self, closure=None):
        self._sync_hyperparameters()
        loss = self.local.step(closure)
        if self.world_size > 1:
            for group in self.param_groups:
                for p in group["params"]:
                    dist.broadcast(p.data, src=self.owner[id(p)])
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        # Every rank computes every gradient (ZeRO-1 shards optimizer state only).
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.zero_()

    def _global_index(self) -> dict[int, int]:
        ids = [id(p) for g in self.param_groups for p in g["params"]]
        return {pid: i for i, pid in enumerate(ids)}

    def state_dict(self) -> dict[str, Any]:
        """Consolidated state: what the unsharded optimizer would return (collective)."""
        gidx = self._global_index()
        local_params = [p for g in self.local.param_groups for p in g["params"]]
        local_sd = self.local.state_dict()
        mine = {
            gidx[id(local_params[i])]: {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in s.items()}
            for i, s in local_sd["state"].items()
        }
        parts = [mine]
        if self.world_size > 1:
            parts = [None] * self.world_size
            dist.all_gather_object(parts, mine)
        state = {i: s for part in parts for i, s in part.items()}
        groups, start = [], 0
        for g in self.param_groups:
            n = len(g["params"])
            groups.append({k: v for k, v in g.items() if k != "params"} | {"params": list(range(start, start + n))})
            start += n
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        gidx = self._global_index()
        for outer, saved in zip(self.param_groups, state_dict["param_groups"]):
            outer.update({k: v for k, v in saved.items() if k != "params"})
        local_params = [p for g in self.local.param_groups for p in g["params"]]
        local_state = {}
        for li, p in enumerate(local_params):
            s = state_dict["state"].get(gidx[id(p)])
            if s is not None:
                # Copy: the caller's tensors must not become this optimizer's live state.
                local_state[li] = {k: (v.to(p.device, copy=True) if torch.is_tensor(v) else v) for k, v in s.items()}
        groups, start = [], 0
        for g in self.local.param_groups:
            n = len(g["params"])
            groups.append({k: v for k, v in g.items() if k != "params"} | {"params": list(range(start, start + n))})
            start += n
        self.local.load_state_dict({"state": local_state, "param_groups": groups})
        self._sync_hyperparameters()

    def local_state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (for memory reports)."""
        return optimizer_state_bytes(self.local)


def optimizer_hyperparameters(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The keyword arguments that rebuild `optimizer`'s class with its defaults (torch adds
    entries such as `differentiable` to `defaults` that not every class accepts)."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        return dict(optimizer.defaults)
    return {k: v for k, v in optimizer.defaults.items() if k in accepted}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


# ----------------------------------------------------------------------------- FSDP2

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def apply_fsdp(model: nn.Module, param_dtype: str = "bf16", reduce_dtype: str = "fp32") -> nn.Module:
    """Shard `model` in place with FSDP2: each block of `model.layers` (if any) is its own
    unit, so only one block's full parameters exist at a time; the root unit holds the rest
    (embeddings, final norm, and a tied lm_head, which must live in one unit).

    Compute runs in `param_dtype`, gradients are reduced in `reduce_dtype`, and the sharded
    master weights and optimizer state stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # slow to import (seconds): only under FSDP

    for name, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
        if value not in _DTYPES:
            raise ValueError(f"{name} must be one of {sorted(_DTYPES)}, got {value!r}")
    policy = MixedPrecisionPolicy(param_dtype=_DTYPES[param_dtype], reduce_dtype=_DTYPES[reduce_dtype])
    for block in getattr(model, "layers", []):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


# ----------------------------------------------------------------------------- strategy glue


def wrap_model(
    model: nn.Module, strategy: str, *, bucket_size_mb: float = 25.0, fsdp_param_dtype: str = "bf16"
) -> nn.Module:
    """Return the model to train under `strategy` (see the module docstring).

    The result always has `finish_gradient_synchronization()` (a no-op where the engine
    syncs by itself), so the training loop need not branch on the strategy.
    """
    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"strategy must be one of {STRATEGY_NAMES}, got {strategy!r}")
    if strategy == "ddp":
        return DDPIndividualParameters(model)
    if strategy in ("ddp_bucketed", "zero1"):
        return DDPBucketed(model, bucket_size_mb=bucket_size_mb)
    if strategy == "fsdp":
        model = apply_fsdp(model, param_dtype=fsdp_param_dtype)
    if not hasattr(model, "finish_gradient_synchronization"):
        model.finish_gradient_synchronization = lambda: None  # FSDP reduces in backward
    return model


def build_optimizer(
    params: Iterable, strategy: str, optimizer_cls: type[torch.optim.Optimizer], **kwargs: Any
) -> torch.optim.Optimizer:
    """`optimizer_cls(params, **kwargs)`, sharded across ranks under zero1."""
    if strategy == "zero1":
        return ShardedOptimizer(params, optimizer_cls, **kwargs)
    return optimizer_cls(params, **kwargs)
