"""Group Relative Policy Optimization with verifiable rewards.

Each step: take ``num_prompts_per_step`` problems, sample ``group_size`` responses for each
from the current policy (temperature sampling, KV cache), score them with a verifier
(``lm.align.rewards``), turn rewards into group-relative advantages, then take
``epochs_per_rollout`` passes of policy-gradient updates over the rollouts. With more than
one epoch (off-policy) or ``loss_type="grpo_clip"``, the rollout-time log-probs are stored
and the clipped ratio π/π_old keeps updates close to the sampling policy.

Held-out problems are decoded greedily every ``eval_every`` steps; their mean verifier
reward is the number that should go up.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from pydantic import Field

from lm.align.batches import batch_from_ids
from lm.align.guard import check_loss, check_weights
from lm.align.losses import LossType, compute_group_normalized_rewards, grpo_microbatch_train_step
from lm.align.ops import get_response_log_probs, masked_mean
from lm.align.rewards import RewardFn, score_responses
from lm.align.rollout import context_length, generate
from lm.config import Config
from lm.train import faults

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
    ro = generate(policy, prompts, max_new_tokens=max_new_tokens, stop_ids=[tokenizer.eot_id], temperature=temperature, generator=g)
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
    """Train ``policy`` in place with GRPO. Returns a history of rewards, losses and evaluations."""
    from lm.train import AdamW, clip_grad_norm_

    if not train_problems:
        raise ValueError("train_grpo needs at least one training problem")
    opt = AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    eot = tokenizer.eot_id
    counts: Counter = Counter()
    hist: dict = {"step": [], "train_reward": [], "loss": [], "clip_fraction": [], "entropy": [], "response_tokens": [],
                  "eval_step": [], "eval_reward": [], "eval_format": []}
    need_old = cfg.loss_type == "grpo_clip" or cfg.epochs_per_rollout > 1
    ctx = context_length(policy)
    t0 = time.time()

    def evaluate(step: int) -> None:
        if not eval_problems:
            return
        m = evaluate_rewards(policy, tokenizer, eval_problems, reward_fn, max_new_tokens=cfg.max_new_tokens)
        hist["eval_step"].append(step)
        hist["eval_reward"].append(m["reward_mean"])
        hist["eval_format"].append(m["format_mean"])
        hist.setdefault("eval_samples", {})[step] = list(zip([p for p, _ in eval_problems[:5]], m["responses"][:5]))
        if log:
            log({"step": step, "eval_reward": m["reward_mean"]})

    evaluate(0)
    order: list[int] = []
    for step in range(1, cfg.num_steps + 1):
        picks = []
        while len(picks) < cfg.num_prompts_per_step:
            if not order:
                order = list(range(len(train_problems)))
                rng.shuffle(order)
            picks.append(train_problems[order.pop()])
        prompt_ids = [tokenizer.encode(p) for p, _ in picks for _ in range(cfg.group_size)]
        if ctx is not None:  # keep each prompt's tail, as generate does, so the scored rows match the rollouts
            counts["truncated_prompts"] += sum(len(p) >= ctx for p in prompt_ids)
            prompt_ids = [p[len(p) - (ctx - 1):] if len(p) >= ctx else p for p in prompt_ids]
        truths = [a for _, a in picks for _ in range(cfg.group_size)]
        ro = generate(policy, prompt_ids, max_new_tokens=cfg.max_new_tokens, stop_ids=[eot], temperature=cfg.temperature, generator=gen)
        counts.update(ro.counts)
        counts["unfinished_responses"] += sum(not f for f in ro.finished)
        texts = [tokenizer.decode(c) for c in ro.completions]
        adv, raw, meta = compute_group_normalized_rewards(reward_fn, texts, truths, cfg.group_size, cfg.advantage_eps, cfg.normalize_by_std)
        counts["verifier_errors"] += meta["reward_errors"]
        counts["zero_signal_groups"] += meta["zero_signal_groups"]
        # The stop token is part of the response: the policy must learn to end its answer.
        responses = [c + [eot] if f else c for c, f in zip(ro.completions, ro.finished)]
        batch = batch_from_ids(prompt_ids, responses, pad_id=eot)
        n = batch.input_ids.shape[0]
        old_lp = None
        if need_old:
            with torch.no_grad():
                old_lp = torch.cat([
                    get_response_log_probs(policy, batch.input_ids[s: s + cfg.microbatch_size], batch.labels[s: s + cfg.microbatch_size])["log_probs"]
                    for s in range(0, n, cfg.microbatch_size)
                ])
        policy.train()
        accum = -(-n // cfg.microbatch_size)
        losses, clips, ents = [], [], []
        for _ in range(cfg.epochs_per_rollout):
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for s in range(0, n, cfg.microbatch_size):
                sl = slice(s, s + cfg.microbatch_size)
                out = get_response_log_probs(policy, batch.input_ids[sl], batch.labels[sl], return_token_entropy=True)
                if faults.inject("grpo.loss", step):  # test-only (lm.train.faults)
                    out["log_probs"] = out["log_probs"] * float("nan")
                loss, m = grpo_microbatch_train_step(
                    out["log_probs"], batch.response_mask[sl], accum, cfg.loss_type,
                    raw_rewards=raw[sl, None], advantages=adv[sl, None],
                    old_log_probs=old_lp[sl] if old_lp is not None else None, cliprange=cfg.cliprange,
                )
                step_loss += loss.item()
                if batch.response_mask[sl].any():
                    ents.append(masked_mean(out["token_entropy"].detach(), batch.response_mask[sl]).item())
                if "clip_fraction" in m and torch.isfinite(m["clip_fraction"]):
                    clips.append(m["clip_fraction"].item())
            check_loss("GRPO", step, step_loss)  # before the update: no checkpoint of NaN weights
            if cfg.max_grad_norm > 0:
                clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            opt.step()
            losses.append(step_loss)
        hist["step"].append(step)
        hist["train_reward"].append(meta["reward_mean"])
        hist["loss"].append(sum(losses) / len(losses))
        hist["clip_fraction"].append(sum(clips) / len(clips) if clips else 0.0)
        hist["entropy"].append(sum(ents) / len(ents) if ents else 0.0)
        hist["response_tokens"].append(float(batch.response_mask.sum()) / n)
        if step % cfg.eval_every == 0 or step == cfg.num_steps:
            evaluate(step)
    check_weights("GRPO", policy, cfg.num_steps)
    hist["seconds"] = round(time.time() - t0, 2)
    hist["counts"] = dict(counts)
    if hist["eval_reward"]:
        hist["eval_reward_before"], hist["eval_reward_after"] = hist["eval_reward"][0], hist["eval_reward"][-1]
    return hist
