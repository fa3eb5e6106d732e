"""Cross-entropy on logits, stable for very large logits (log-sum-exp with the max subtracted)."""

from __future__ import annotations

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(logits)[target] over all leading dims.

    logits (..., V) float, targets (...) int64 -> scalar. Computed in float32 so bf16 logits lose nothing.
    """
    logits = logits.float()
    # logsumexp subtracts the row max before exponentiating (so 1000x logits stay finite), in one fused op
    log_z = torch.logsumexp(logits, dim=-1)  # (...)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
    return (log_z - target_logit).mean()
