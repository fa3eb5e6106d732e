"""Learning-rate schedule: linear warmup, cosine decay to ``min_lr``, then constant."""

from __future__ import annotations

import math


def cosine_lr(it: int, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int) -> float:
    """lr at iteration ``it``: it/warmup·max_lr while warming up, cosine from max_lr to min_lr until
    ``cosine_cycle_iters``, min_lr afterwards (the CS336 schedule)."""
    if it < warmup_iters:
        return it / warmup_iters * max_lr
    if it <= cosine_cycle_iters:
        progress = (it - warmup_iters) / max(1, cosine_cycle_iters - warmup_iters)
        return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    return min_lr
