"""Tensor functions every alignment loss is built from: masked reductions, entropy, log-probs.

These are the small, numerically checked pieces shared by SFT, DPO and GRPO
(names follow the CS336 assignment-5 adapters). Shapes: ``B`` sequences, ``T`` positions,
``V`` vocabulary. A *response mask* is 1 (True) on response tokens of ``labels`` and 0 on
prompt and padding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(tensor: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``tensor`` over the elements where ``mask`` is 1, along ``dim`` (all dims if None).

    A slice with no masked element gives 0/0 = NaN, as a plain mean of nothing would; callers
    that can meet empty responses use :func:`masked_normalize` or guard the count.
    """
    mask = mask.to(tensor.dtype)
    if dim is None:
        return (tensor * mask).sum() / mask.sum()
    return (tensor * mask).sum(dim=dim) / mask.sum(dim=dim)


def masked_normalize(tensor: Tensor, mask: Tensor, dim: int | None = None, normalize_constant: float = 1.0) -> Tensor:
    """Sum of ``tensor`` where ``mask`` is 1, along ``dim`` (all dims if None), divided by a constant.

    Dividing by a constant instead of the token count (Dr. GRPO; SFT "sum" normalization)
    keeps long and short responses on the same per-token scale.
    """
    if normalize_constant == 0:
        raise ValueError("normalize_constant must be non-zero (it divides the masked sum)")
    mask = mask.to(tensor.dtype)
    summed = (tensor * mask).sum() if dim is None else (tensor * mask).sum(dim=dim)
    return summed / normalize_constant


def compute_entropy(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position: (..., V) -> (...).

    Computed from log-softmax (logsumexp) so large logits do not overflow.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def model_logits(model: torch.nn.Module, input_ids: Tensor) -> Tensor:
    """Logits (B, T, V) of any causal LM: our TransformerLM returns a tensor, a HF model an object."""
    out = model(input_ids)
    return out.logits if hasattr(out, "logits") else out


def get_response_log_probs(
    model: torch.nn.Module, input_ids: Tensor, labels: Tensor, return_token_entropy: bool = False
) -> dict[str, Tensor]:
    """Log-probability of each label under ``model`` (and optionally the entropy), both (B, T).

    Nothing is masked here: the training step applies the response mask.
    """
    logits = model_logits(model, input_ids)  # (B, T, V)
    logp = torch.log_softmax(logits.float(), dim=-1)
    out = {"log_probs": logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)}  # (B, T)
    if return_token_entropy:
        out["token_entropy"] = -(logp.exp() * logp).sum(dim=-1)
    return out


def sequence_log_probs(model: torch.nn.Module, input_ids: Tensor, labels: Tensor, response_mask: Tensor) -> Tensor:
    """Summed log-probability of each sequence's response tokens: (B,)."""
    lp = get_response_log_probs(model, input_ids, labels)["log_probs"]
    return (lp * response_mask.to(lp.dtype)).sum(dim=-1)
