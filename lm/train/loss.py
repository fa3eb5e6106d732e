"""Cross-entropy on logits, stable for very large logits, with a one-pass backward.

loss = mean(logsumexp(logits) − logits[target]). ``torch.logsumexp`` subtracts the row max before
exponentiating, so 1000× logits stay finite. The gradient, softmax(logits) − onehot(target)
(over the number of rows), is written in place into one tensor: autograd through
logsumexp + gather would allocate and add several (rows × vocab) tensors.
"""

from __future__ import annotations

import torch


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # logits (N, V) float32, targets (N,)
        log_z = torch.logsumexp(logits, dim=-1)  # (N,)
        target_logit = logits.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
        ctx.save_for_backward(logits, targets, log_z)
        return (log_z - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, log_z = ctx.saved_tensors
        d = torch.exp(logits - log_z[:, None])  # softmax, (N, V)
        d.scatter_add_(-1, targets[:, None], torch.full_like(log_z[:, None], -1.0))
        d.mul_(grad / logits.shape[0])
        return d, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(logits)[target] over all leading dims.

    logits (..., V) float, targets (...) int64 -> scalar. Computed in float32 so bf16 logits lose nothing.
    """
    V = logits.shape[-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return _CrossEntropy.apply(logits.reshape(-1, V), targets.reshape(-1))
