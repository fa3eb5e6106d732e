"""Group Relative Policy Optimization with verifiable rewards.

Each step: take ``num_prompts_per_step`` problems, sample ``group_size`` responses for each
from the current policy (temperature sampling, KV cache), score them with a verifier
(``lm.align.rewards``), turn rewards into group-relative advantages, then take
``epochs_per_rollout`` passes of policy-gradient updates over the rollouts. With more than
one epoch (off-policy) or ``loss_type="grpo_clip"``, the rollout-time log-probs are stored
and the clipped ratio π/π_old keeps updates close to the sampling policy.

Held-out problems are decoded greedily every ``eval_every`` steps; their mean verifier
reward is the number that should go up.

The loop reads like torchtitan's: ``train_grpo`` calls ``setup_grpo`` once, then per step
``next_problems`` → ``rollout`` (sample, score, advantages) → ``policy_update`` (the
optimizer steps), and ``evaluate_policy`` every ``eval_every`` steps.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import Field

from lm import faults
from lm.align.batches import TokenizedBatch, batch_from_ids, next_indices
from lm.align.guard import check_loss, check_weights
from lm.align.losses import LossType, compute_group_normalized_rewards, grpo_microbatch_train_step
from lm.align.ops import get_response_log_probs, masked_mean
from lm.align.rewards import RewardFn, score_responses
from lm.align.rollout import context_length, generate_rollouts
from lm.config import Config

Problem = tuple[str, str]  # (prompt, ground-truth answer)


class GRPOConfig(Config):
    """Hyperparameters of the GRPO loop."""

    num_steps: int = Field(50, ge=1, le=1000000000, description="Rollout + update rounds.")
    num_prompts_per_step: int = Field(16, ge=1, le=1 << 16, description="Problems sampled per rollout batch.")
    group_size: int = Field(8, ge=1, le=1024, description="Responses sampled per problem (the group advantages are relative to).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    max_new_tokens: int = Field(16, ge=1, le=1 << 16, description="Longest response sampled.")
    loss_type: LossType = Field("grpo_clip", description="Policy-gradient loss: no_baseline, reinforce_with_baseline or grpo_clip.")
    normalize_by_std: bool = Field(True, description="Divide advantages by the group's std (+eps).")
    advantage_eps: float = Field(1e-6, ge=0, description="Added to the group std before dividing.")
    cliprange: float = Field(0.2, gt=0, description="ε of grpo_clip: the ratio is clipped to [1−ε, 1+ε].")
    epochs_per_rollout: int = Field(1, ge=1, le=1000, description="Passes over each rollout batch (>1 = off-policy, uses stored old log-probs).")
    microbatch_size: int = Field(32, ge=1, le=1 << 16, description="Rollouts per forward/backward (gradient accumulation over the rest).")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = off).")
    eval_every: int = Field(10, ge=1, le=1000000000, description="Greedy evaluation on held-out problems every this many steps.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for problem order and sampling.")


@torch.no_grad()
def evaluate_rewards(policy, tokenizer, problems: Sequence[Problem], reward_fn: RewardFn, *, max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> dict:
    """Decode each problem once (greedy by default) and score it: mean reward, format rate, samples."""
    prompts = [tokenizer.encode(p) for p, _ in problems]
    g = torch.Generator().manual_seed(seed)
    ro = generate_rollouts(policy, prompts, max_new_tokens=max_new_tokens, stop_ids=[tokenizer.eot_id], temperature=temperature, generator=g)
    texts = [tokenizer.decode(c) for c in ro.completions]
    scores, errors = score_responses(reward_fn, texts, [a for _, a in problems])
    n = max(len(scores), 1)
    return {
        "reward_mean": sum(s["reward"] for s in scores) / n,
        "format_mean": sum(s["format_reward"] for s in scores) / n,
        "responses": texts,
        "rewards": [s["reward"] for s in scores],
        "verifier_errors": sum(errors.values()),
        "counts": dict(ro.counts),
    }


@dataclass
class RolloutBatch:
    """One step's rollouts, scored: token rows, group-relative advantages and raw rewards."""

    batch: TokenizedBatch
    advantages: torch.Tensor  # (n,)
    raw_rewards: torch.Tensor  # (n,)
    reward_mean: float
    old_log_probs: torch.Tensor | None  # (n, T) at rollout time, for the clipped ratio


@dataclass
class GRPOLoop:
    """What the loop carries from step to step (built by ``setup_grpo``)."""

    opt: torch.optim.Optimizer
    rng: random.Random  # problem order
    gen: torch.Generator  # sampling
    counts: Counter
    hist: dict
    need_old: bool
    ctx: int | None
    order: list[int] = field(default_factory=list)


def setup_grpo(policy: torch.nn.Module, train_problems: Sequence[Problem], cfg: GRPOConfig) -> GRPOLoop:
    from lm.train import AdamW

    if not train_problems:
        raise ValueError("train_grpo needs at least one training problem")
    return GRPOLoop(
        opt=AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay),
        rng=random.Random(cfg.seed),
        gen=torch.Generator().manual_seed(cfg.seed),
        counts=Counter(),
        hist={"step": [], "train_reward": [], "loss": [], "clip_fraction": [], "entropy": [], "response_tokens": [],
              "eval_step": [], "eval_reward": [], "eval_format": []},
        need_old=cfg.loss_type == "grpo_clip" or cfg.epochs_per_rollout > 1,
        ctx=context_length(policy),
    )


def next_problems(loop: GRPOLoop, train_problems: Sequence[Problem], n: int) -> list[Problem]:
    """``n`` problems, each epoch of the training set in a fresh shuffled order."""
    return [train_problems[i] for i in next_indices(loop.order, loop.rng, len(train_problems), n)]


def rollout(policy, tokenizer, picks: Sequence[Problem], reward_fn: RewardFn, cfg: GRPOConfig, loop: GRPOLoop) -> RolloutBatch:
    """Sample ``group_size`` responses per problem, score them, and compute group-relative advantages."""
    eot = tokenizer.eot_id
    prompt_ids = [tokenizer.encode(p) for p, _ in picks for _ in range(cfg.group_size)]
    if loop.ctx is not None:  # keep each prompt's tail, as generate does, so the scored rows match the rollouts
        loop.counts["truncated_prompts"] += sum(len(p) >= loop.ctx for p in prompt_ids)
        prompt_ids = [p[len(p) - (loop.ctx - 1):] if len(p) >= loop.ctx else p for p in prompt_ids]
    truths = [a for _, a in picks for _ in range(cfg.group_size)]
    ro = generate_rollouts(policy, prompt_ids, max_new_tokens=cfg.max_new_tokens, stop_ids=[eot], temperature=cfg.temperature, generator=loop.gen)
    loop.counts.update(ro.counts)
    loop.counts["unfinished_responses"] += sum(not f for f in ro.finished)
    texts = [tokenizer.decode(c) for c in ro.completions]
    adv, raw, meta = compute_group_normalized_rewards(reward_fn, texts, truths, cfg.group_size, cfg.advantage_eps, cfg.normalize_by_std)
    loop.counts["verifier_errors"] += meta["reward_errors"]
    loop.counts["zero_signal_groups"] += meta["zero_signal_groups"]
    # The stop token is part of the response: the policy must learn to end its answer.
    responses = [c + [eot] if f else c for c, f in zip(ro.completions, ro.finished)]
    batch = batch_from_ids(prompt_ids, responses, pad_id=eot)
    old_lp = None
    if loop.need_old:
        with torch.no_grad():
            old_lp = torch.cat([get_response_log_probs(policy, batch.input_ids[sl], batch.labels[sl])["log_probs"]
                                for sl in _microbatches(batch.input_ids.shape[0], cfg.microbatch_size)])
    return RolloutBatch(batch, adv, raw, meta["reward_mean"], old_lp)


def _microbatches(n: int, size: int) -> list[slice]:
    return [slice(s, s + size) for s in range(0, n, size)]


def policy_update(policy, rb: RolloutBatch, cfg: GRPOConfig, loop: GRPOLoop, step: int) -> dict:
    """``epochs_per_rollout`` optimizer steps over the rollouts; mean loss, clip fraction and entropy."""
    from lm.train import clip_grad_norm_

    batch = rb.batch
    n = batch.input_ids.shape[0]
    policy.train()
    accum = -(-n // cfg.microbatch_size)
    losses, clips, ents = [], [], []
    for _ in range(cfg.epochs_per_rollout):
        loop.opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for sl in _microbatches(n, cfg.microbatch_size):
            out = get_response_log_probs(policy, batch.input_ids[sl], batch.labels[sl], return_token_entropy=True)
            if faults.inject("grpo.loss", step):  # test-only (lm.faults)
                out["log_probs"] = out["log_probs"] * float("nan")
            loss, m = grpo_microbatch_train_step(
                out["log_probs"], batch.response_mask[sl], accum, cfg.loss_type,
                raw_rewards=rb.raw_rewards[sl, None], advantages=rb.advantages[sl, None],
                old_log_probs=rb.old_log_probs[sl] if rb.old_log_probs is not None else None, cliprange=cfg.cliprange,
            )
            step_loss += loss.item()
            if batch.response_mask[sl].any():
                ents.append(masked_mean(out["token_entropy"].detach(), batch.response_mask[sl]).item())
            if "clip_fraction" in m and torch.isfinite(m["clip_fraction"]):
                clips.append(m["clip_fraction"].item())
        check_loss("GRPO", step, step_loss)  # before the update: no checkpoint of NaN weights
        if cfg.max_grad_norm > 0:
            clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        loop.opt.step()
        losses.append(step_loss)
    return {
        "loss": sum(losses) / len(losses),
        "clip_fraction": sum(clips) / len(clips) if clips else 0.0,
        "entropy": sum(ents) / len(ents) if ents else 0.0,
        "response_tokens": float(batch.response_mask.sum()) / n,
    }


def evaluate_policy(policy, tokenizer, eval_problems: Sequence[Problem], reward_fn: RewardFn, cfg: GRPOConfig, loop: GRPOLoop, step: int) -> dict | None:
    """Greedy decoding of the held-out problems: appended to the history; None without problems."""
    if not eval_problems:
        return None
    m = evaluate_rewards(policy, tokenizer, eval_problems, reward_fn, max_new_tokens=cfg.max_new_tokens)
    hist = loop.hist
    hist["eval_step"].append(step)
    hist["eval_reward"].append(m["reward_mean"])
    hist["eval_format"].append(m["format_mean"])
    hist.setdefault("eval_samples", {})[step] = list(zip([p for p, _ in eval_problems[:5]], m["responses"][:5]))
    return m


def train_grpo(
    policy: torch.nn.Module,
    tokenizer,
    train_problems: Sequence[Problem],
    eval_problems: Sequence[Problem],
    reward_fn: RewardFn,
    cfg: GRPOConfig,
    *,
    log: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``policy`` in place with GRPO. Returns a history of rewards, losses and evaluations.

    ``log`` (e.g. a progress reporter) gets one dict per step (step, total, loss, reward,
    tokens, entropy, clip_fraction) and one per evaluation (step, eval_reward).
    """
    loop = setup_grpo(policy, train_problems, cfg)
    hist, t0 = loop.hist, time.time()
    say = log or (lambda row: None)

    def evaluate(step: int) -> None:
        m = evaluate_policy(policy, tokenizer, eval_problems, reward_fn, cfg, loop, step)
        if m is not None:
            say({"step": step, "total": cfg.num_steps, "eval_reward": m["reward_mean"]})

    evaluate(0)
    for step in range(1, cfg.num_steps + 1):
        rb = rollout(policy, tokenizer, next_problems(loop, train_problems, cfg.num_prompts_per_step), reward_fn, cfg, loop)
        m = policy_update(policy, rb, cfg, loop, step)
        hist["step"].append(step)
        hist["train_reward"].append(rb.reward_mean)
        for k, v in m.items():
            hist[k].append(v)
        say({"step": step, "total": cfg.num_steps, "loss": m["loss"], "reward": rb.reward_mean, "entropy": m["entropy"],
             "clip_fraction": m["clip_fraction"], "tokens": int(rb.batch.input_ids.numel())})
        if step % cfg.eval_every == 0 or step == cfg.num_steps:
            evaluate(step)
    check_weights("GRPO", policy, cfg.num_steps)
    hist["seconds"] = round(time.time() - t0, 2)
    hist["counts"] = dict(loop.counts)
    if hist["eval_reward"]:
        hist["eval_reward_before"], hist["eval_reward_after"] = hist["eval_reward"][0], hist["eval_reward"][-1]
    return hist
