"""Test-only fault injection: the one seam through which the reliability tests reach library code.

Nothing here does anything unless a fault plan is active. A plan comes from the environment,
read once per process (on first use: the flow process, a Prefect worker's flow-run process, a
Dask/Ray worker and a ``torchrun`` rank each read their own inherited environment), or is
installed in-process with :func:`install` / :func:`injected` (tests that call the library
directly). Library code only calls the hooks below; it never reads these variables itself.

``LMPIPE_FAULT_INJECT`` — faults at an exact step, comma-separated ``ACTION@POINT:STEP``
(steps count from 1, as in metrics.jsonl)::

    nan@loss:8                 the loss of pretraining step 8 is NaN (as if a batch overflowed)
    nan@param:10               a weight turns NaN right after step 10's optimizer step
    kill@backward:13           SIGKILL mid-step 13 (after backward, before the update)
    kill@checkpoint.model:20   SIGKILL while step 20's checkpoint is written: .model (weights
                               written), .meta (all files written, not yet renamed), .renamed
                               (in place, not yet rotated)
    nan@sft.loss:3             alignment loops: step 3's loss is NaN in SFT; also dpo.loss,
                               grpo.loss, and sft.param (a weight turns NaN after step 3's update)

``LMPIPE_TEST_SHARD_DELAY_S`` — sleep that many seconds × (1 + index % 4) between a shard's last
row and its rename into place (kill tests SIGKILL a run while a shard is half-finished;
staggered so shards running in parallel finish one after another).

``LMPIPE_TEST_SHARD_STALL_S`` — the extract stage stalls that long with its shard open (a test
kills the Dask worker mid-shard).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

INJECT_ENV = "LMPIPE_FAULT_INJECT"
SHARD_DELAY_ENV = "LMPIPE_TEST_SHARD_DELAY_S"
SHARD_STALL_ENV = "LMPIPE_TEST_SHARD_STALL_S"
_ACTIONS = ("nan", "kill")


@dataclass(frozen=True)
class FaultPlan:
    """The faults one process injects (empty: none)."""

    steps: tuple[tuple[str, str, int], ...] = ()  # (action, point, step)
    shard_delay_s: float = 0.0
    shard_stall_s: float = 0.0

    @classmethod
    def parse(cls, inject: str = "", shard_delay_s: float | str = 0.0, shard_stall_s: float | str = 0.0) -> FaultPlan:
        steps = []
        for item in filter(None, (s.strip() for s in inject.split(","))):
            try:
                action, rest = item.split("@", 1)
                point, step = rest.rsplit(":", 1)
                steps.append((action, point, int(step)))
            except ValueError:
                raise ValueError(
                    f"{INJECT_ENV}={inject!r}: {item!r} is not ACTION@POINT:STEP "
                    "(e.g. nan@loss:8, kill@checkpoint.meta:20)"
                ) from None
            if action not in _ACTIONS:
                raise ValueError(f"{INJECT_ENV}={inject!r}: action {action!r} must be one of {_ACTIONS}")
        return cls(tuple(steps), float(shard_delay_s or 0), float(shard_stall_s or 0))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> FaultPlan:
        return cls.parse(
            environ.get(INJECT_ENV, ""), environ.get(SHARD_DELAY_ENV, "0"), environ.get(SHARD_STALL_ENV, "0")
        )


_plan: FaultPlan | None = None


def plan() -> FaultPlan:
    """The active plan: the installed one, else the environment's (read on the first call)."""
    global _plan
    if _plan is None:
        _plan = FaultPlan.from_env()
    return _plan


def install(new: FaultPlan | None) -> None:
    """Make ``new`` the active plan (None: read the environment again on next use)."""
    global _plan
    _plan = new


@contextlib.contextmanager
def injected(inject: str = "", *, shard_delay_s: float = 0.0, shard_stall_s: float = 0.0) -> Iterator[FaultPlan]:
    """Run a block with a fault plan installed in this process, then restore the previous one."""
    before = _plan
    install(FaultPlan.parse(inject, shard_delay_s, shard_stall_s))
    try:
        yield plan()
    finally:
        install(before)


# --------------------------------------------------------------------------- hooks library code calls


def inject(point: str, step: int) -> bool:
    """At ``point`` of ``step``: SIGKILL this process if asked to; True if a NaN is asked for here."""
    steps = plan().steps
    if not steps:  # the normal case
        return False
    hit = {action for action, p, s in steps if p == point and s == step}
    if "kill" in hit:
        os.kill(os.getpid(), signal.SIGKILL)
    return "nan" in hit


def shard_pause(index: int = 0) -> None:
    """Between a shard's last row and its rename into place (``LMPIPE_TEST_SHARD_DELAY_S``)."""
    if delay := plan().shard_delay_s:
        time.sleep(delay * (1 + index % 4))


def shard_stall() -> None:
    """Inside an open extract shard, before its first record (``LMPIPE_TEST_SHARD_STALL_S``)."""
    if stall := plan().shard_stall_s:
        time.sleep(stall)


def poison_a_weight(model) -> None:
    """As if the update overflowed: one weight of ``model`` (a torch module) becomes NaN. The
    last parameter (the output head) feeds every position's logits, so the next loss is NaN too."""
    last = list(model.parameters())[-1]
    last.data.view(-1)[0] = float("nan")  # .data: outside autograd, as torch.no_grad() would be
