"""Divergence guards of the SFT, DPO and GRPO loops: a non-finite loss or weights never reach a checkpoint.

The stages save the policy only after its loop returns, so raising here (``FloatingPointError``
naming the loop and the step) means no stage and no checkpoint are written, and the model the
stage started from stays the last good one. A rerun starts the stage again.
"""

from __future__ import annotations

import math

import torch


def check_loss(loop: str, step: int, loss: float) -> None:
    """Raise before the optimizer step when ``loss`` is NaN or infinite."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"{loop} diverged at step {step}: loss {loss} is not finite; no checkpoint written "
            f"(lower the learning rate or raise the warmup)"
        )


def check_weights(loop: str, model: torch.nn.Module, step: int) -> None:
    """Raise when any weight is NaN or infinite (an update that overflowed)."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(
            f"{loop} diverged: weights {bad[:3]} are not finite after step {step}; no checkpoint written"
        )
