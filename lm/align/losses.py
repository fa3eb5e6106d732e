"""The alignment losses: SFT masked NLL, GRPO advantages and policy-gradient losses, DPO.

Each function is checked against hand-computed values and the CS336 assignment-5
snapshots (tests/lm/align/test_align_losses.py). Per-token losses are (B, T); a reward or
advantage per rollout is (B, 1) so it broadcasts over the response.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lm.align.ops import masked_mean, masked_normalize

LossType = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip"]
LOSS_TYPES = ("no_baseline", "reinforce_with_baseline", "grpo_clip")


# --------------------------------------------------------------------------- SFT


def sft_microbatch_train_step(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    gradient_accumulation_steps: int,
    normalize_constant: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked NLL of one microbatch, backpropagated; returns the (scaled) loss and metadata.

    loss = mean over sequences of (−Σ_response log p) / normalize_constant, divided by
    ``gradient_accumulation_steps`` so that the accumulated gradient is a mean over the batch.
    """
    per_seq = -masked_normalize(policy_log_probs, response_mask, dim=-1, normalize_constant=normalize_constant)  # (B,)
    loss = per_seq.mean() / gradient_accumulation_steps
    loss.backward()
    n_tokens = response_mask.sum()
    return loss.detach(), {"response_tokens": n_tokens.detach(), "nll_per_sequence": per_seq.detach()}


# --------------------------------------------------------------------------- GRPO advantages


def compute_group_normalized_rewards(
    reward_fn: Callable[[str, str], dict[str, float]],
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence[str],
    group_size: int,
    advantage_eps: float = 1e-6,
    normalize_by_std: bool = True,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Score rollouts and turn rewards into advantages relative to their group.

    Rollouts come in consecutive groups of ``group_size`` (same prompt). Advantage =
    reward − group mean, optionally / (group std + eps) with the unbiased std. A group whose
    rewards are all equal carries no signal: its advantages are exactly 0 (never NaN), and
    a group of one has std 0. A ``reward_fn`` that raises scores 0 and is counted
    (``metadata["reward_errors"]``). Returns (advantages (N,), raw rewards (N,), metadata).
    """
    if group_size < 1:
        raise ValueError(f"group_size={group_size}: must be >= 1")
    if len(rollout_responses) != len(repeated_ground_truths):
        raise ValueError(
            f"{len(rollout_responses)} responses but {len(repeated_ground_truths)} ground truths; "
            "repeat each ground truth group_size times"
        )
    if len(rollout_responses) % group_size:
        raise ValueError(f"{len(rollout_responses)} responses is not a multiple of group_size={group_size}")
    errors: Counter = Counter()
    rewards: list[float] = []
    format_rewards: list[float] = []
    for response, truth in zip(rollout_responses, repeated_ground_truths):
        try:
            scores = reward_fn(response, truth)
            r = float(scores["reward"])
            if not math.isfinite(r):
                raise ValueError(f"non-finite reward {r}")
            format_rewards.append(float(scores.get("format_reward", r)))
        except Exception as e:  # a verifier bug or malformed answer must not kill the rollout batch
            errors[type(e).__name__] += 1
            r = 0.0
            format_rewards.append(0.0)
        rewards.append(r)
    raw = torch.tensor(rewards, dtype=torch.float32)
    if raw.numel() == 0:
        return raw.clone(), raw, {"reward_mean": 0.0, "reward_errors": 0, "num_groups": 0}
    groups = raw.view(-1, group_size)  # (G, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if normalize_by_std:
        std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
        centred = centred / (std + advantage_eps)
    # All-equal groups: the centred value is exactly 0 already; make sure eps=0 cannot give 0/0.
    advantages = torch.nan_to_num(centred, nan=0.0).view(-1)
    meta = {
        "reward_mean": raw.mean().item(),
        "reward_std": raw.std().item() if raw.numel() > 1 else 0.0,
        "reward_max": raw.max().item(),
        "reward_min": raw.min().item(),
        "format_reward_mean": sum(format_rewards) / len(format_rewards),
        "num_groups": groups.shape[0],
        "zero_signal_groups": int((groups.max(dim=1).values == groups.min(dim=1).values).sum()),
        "reward_errors": sum(errors.values()),
        **{f"reward_error:{k}": v for k, v in errors.items()},
    }
    return advantages, raw, meta


# --------------------------------------------------------------------------- policy-gradient losses


def compute_naive_policy_gradient_loss(raw_rewards_or_advantages: Tensor, policy_log_probs: Tensor) -> Tensor:
    """REINFORCE per-token loss −A·log π: (B, 1) × (B, T) -> (B, T)."""
    return -raw_rewards_or_advantages * policy_log_probs


def compute_grpo_clip_loss(
    advantages: Tensor, policy_log_probs: Tensor, old_log_probs: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-style clipped per-token loss −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = π/π_old: (B, T).

    Metadata ``clipped`` marks tokens where the clipped term was the smaller (the gradient
    is cut there); its masked mean is the clip fraction.
    """
    ratio = torch.exp(policy_log_probs - old_log_probs)  # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, {"clipped": (clipped < unclipped).detach(), "ratio": ratio.detach()}


def compute_policy_gradient_loss(
    policy_log_probs: Tensor,
    loss_type: LossType,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Dispatch to the loss named by ``loss_type``; checks that its inputs were given."""
    if loss_type == "no_baseline":
        if raw_rewards is None:
            raise ValueError("loss_type='no_baseline' needs raw_rewards")
        return compute_naive_policy_gradient_loss(raw_rewards, policy_log_probs), {}
    if loss_type == "reinforce_with_baseline":
        if advantages is None:
            raise ValueError("loss_type='reinforce_with_baseline' needs advantages")
        return compute_naive_policy_gradient_loss(advantages, policy_log_probs), {}
    if loss_type == "grpo_clip":
        if advantages is None or old_log_probs is None or cliprange is None:
            raise ValueError("loss_type='grpo_clip' needs advantages, old_log_probs and cliprange")
        return compute_grpo_clip_loss(advantages, policy_log_probs, old_log_probs, cliprange)
    raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")


def grpo_microbatch_train_step(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    gradient_accumulation_steps: int,
    loss_type: LossType,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
    normalize_constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Policy-gradient loss of one microbatch, backpropagated.

    Per-token losses are averaged over each response's tokens (or, with
    ``normalize_constant``, summed and divided by it as in Dr. GRPO), then over the
    microbatch, then divided by ``gradient_accumulation_steps``. A response with no tokens
    contributes 0 instead of NaN.
    """
    per_token, meta = compute_policy_gradient_loss(
        policy_log_probs, loss_type, raw_rewards, advantages, old_log_probs, cliprange
    )
    if normalize_constant is not None:
        per_seq = masked_normalize(per_token, response_mask, dim=-1, normalize_constant=normalize_constant)
    else:
        mask = response_mask.to(per_token.dtype)
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
    loss = per_seq.mean() / gradient_accumulation_steps
    loss.backward()
    if "clipped" in meta:
        meta["clip_fraction"] = masked_mean(meta["clipped"].float(), response_mask)
    return loss.detach(), meta


# --------------------------------------------------------------------------- DPO


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-instance DPO loss −log σ(β·((log πθ(c) − log πref(c)) − (log πθ(r) − log πref(r)))).

    Inputs are summed response log-probs, (B,). Returns the per-instance loss (B,) and the
    implicit rewards β·(log πθ − log πref) of chosen and rejected, whose difference is the
    reward margin; accuracy is the fraction with a positive margin.
    """
    chosen_reward = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_reward = beta * (policy_rejected_logps - ref_rejected_logps)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin)  # stable for large |margin|
    return loss, {
        "chosen_reward": chosen_reward.detach(),
        "rejected_reward": rejected_reward.detach(),
        "margin": margin.detach(),
        "accuracy": (margin > 0).float().detach(),
    }
