"""Test-only fault injection for training: ``LMPIPE_FAULT_INJECT`` names faults; unset, nothing happens.

The reliability suite (tests/reliability/test_training_faults.py) sets it in a training
subprocess to put a fault at an exact point, which an outside signal cannot hit reliably:

    LMPIPE_FAULT_INJECT="nan@loss:8"               the loss of step 8 is NaN (as if a batch overflowed)
    LMPIPE_FAULT_INJECT="nan@param:10"             a weight turns NaN right after step 10's optimizer step
    LMPIPE_FAULT_INJECT="kill@backward:13"         SIGKILL mid-step 13 (after backward, before the update)
    LMPIPE_FAULT_INJECT="kill@checkpoint.model:20" SIGKILL while step 20's checkpoint is written:
                                                   .model (weights written), .meta (all files written,
                                                   not yet renamed), .renamed (in place, not yet rotated)
    LMPIPE_FAULT_INJECT="nan@sft.loss:3"           alignment loops (lm.align): step 3's loss is NaN in SFT;
                                                   also dpo.loss, grpo.loss, and sft.param (a weight
                                                   turns NaN after step 3's update)

Several faults: comma-separated. Steps count from 1, as in metrics.jsonl.
"""

from __future__ import annotations

import os
import signal

ENV = "LMPIPE_FAULT_INJECT"


def _faults() -> list[tuple[str, str, int]]:
    raw = os.environ.get(ENV, "")
    out = []
    for item in filter(None, (s.strip() for s in raw.split(","))):
        try:
            action, rest = item.split("@", 1)
            point, step = rest.rsplit(":", 1)
            out.append((action, point, int(step)))
        except ValueError:
            raise ValueError(f"{ENV}={raw!r}: {item!r} is not ACTION@POINT:STEP (e.g. nan@loss:8, kill@checkpoint.meta:20)") from None
        if action not in ("nan", "kill"):
            raise ValueError(f"{ENV}={raw!r}: action {action!r} must be 'nan' or 'kill'")
    return out


def inject(point: str, step: int) -> bool:
    """At ``point`` of ``step``: SIGKILL this process if asked to; True if a NaN is asked for here."""
    if ENV not in os.environ:  # the normal case: one dict lookup
        return False
    hit = {action for action, p, s in _faults() if p == point and s == step}
    if "kill" in hit:
        os.kill(os.getpid(), signal.SIGKILL)
    return "nan" in hit
