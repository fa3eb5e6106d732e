"""Cross-entropy on logits, stable for very large logits (log-sum-exp with the max subtracted)."""

from __future__ import annotations

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(logits)[target] over all leading dims.

    logits (..., V) float, targets (...) int64 -> scalar. Computed in float32 so bf16 logits lose nothing.
    """
    logits = logits.float()
    shifted = logits - logits.amax(dim=-1, keepdim=True)  # largest logit becomes 0: exp never overflows
    log_z = shifted.exp().sum(dim=-1).log()  # (...)
    target_logit = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
    return (log_z - target_logit).mean()
