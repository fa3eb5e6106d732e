"""Supervised fine-tuning: maximize the likelihood of responses given prompts.

Works on any ``torch.nn.Module`` mapping ids (B, T) to logits (B, T, V) (our TransformerLM
or a Hugging Face causal LM) and any tokenizer with ``encode``. Only response tokens carry
loss (the response mask), and each response ends with the tokenizer's end-of-text so the
model learns to stop; the loss per microbatch is normalized as configured:

    normalize="tokens"     mean NLL per response token (long and short answers weigh per token)
    normalize="constant"   Σ NLL / normalize_constant per sequence (CS336 ``masked_normalize``)

Gradients are accumulated over ``gradient_accumulation_steps`` microbatches, clipped, then
AdamW steps. Held-out response NLL is measured before, during and after training. A
non-finite loss, or non-finite weights at the end, raise ``FloatingPointError`` naming the
step: the stage then writes no checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from pydantic import Field

from lm import faults
from lm.align.batches import next_indices, tokenize_prompt_and_output
from lm.align.guard import check_loss, check_weights
from lm.align.losses import sft_microbatch_train_step
from lm.align.ops import get_response_log_probs
from lm.align.rollout import context_length
from lm.config import Config


class SFTConfig(Config):
    """Hyperparameters of the SFT loop."""

    num_steps: int = Field(200, ge=1, le=1000000000, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, le=1 << 16, description="Examples per optimizer step (split into microbatches).")
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=1 << 16, description="Microbatches per step; batch_size must divide by it."
    )
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (constant after warmup).")
    warmup_steps: int = Field(10, ge=0, le=1000000000, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = off).")
    normalize: Literal["tokens", "constant"] = Field(
        "tokens", description="Loss normalization: per response token, or Σ/normalize_constant."
    )
    normalize_constant: float = Field(1.0, gt=0, description="Divisor of the summed NLL when normalize='constant'.")
    max_length: int | None = Field(
        None,
        ge=2,
        le=1 << 20,
        description=(
            "Cap on prompt+response tokens (default: model context + 1); longer responses are truncated and counted."
        ),
    )
    eval_every: int = Field(50, ge=1, le=1000000000, description="Measure held-out NLL every this many steps.")
    stop_at_reward: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Stop once the verifier reward (greedy) on a sample of training prompts reaches this, "
            "checked every eval_every steps; the demo uses it to leave GRPO room. Null = train all steps."
        ),
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for batch order.")


def max_length_for(model, cfg_max: int | None) -> int | None:
    """Longest prompt+response row the model takes: its context + 1 (inputs are one shorter), capped by ``cfg_max``."""
    ctx = context_length(model)
    if cfg_max is not None:
        return cfg_max if ctx is None else min(cfg_max, ctx + 1)
    return None if ctx is None else ctx + 1  # input_ids are one shorter than the row


@torch.no_grad()
def response_nll(
    model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32, max_length: int | None = None
) -> float:
    """Mean negative log-likelihood per response token (end-of-text included) of held-out pairs."""
    was = model.training
    model.eval()
    total, n = 0.0, 0
    max_length = max_length_for(model, max_length)
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        b = tokenize_prompt_and_output(
            [p for p, _ in chunk], [r for _, r in chunk], tokenizer, max_length=max_length, eot_id=tokenizer.eot_id
        )
        lp = get_response_log_probs(model, b.input_ids, b.labels)["log_probs"]
        total += -(lp * b.response_mask).sum().item()
        n += int(b.response_mask.sum())
    model.train(was)
    return total / max(n, 1)


def _lr_at(step: int, cfg: SFTConfig) -> float:
    return cfg.lr * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def sft_step(
    model,
    tokenizer,
    opt,
    chunks: Sequence[Sequence[tuple[str, str]]],
    cfg: SFTConfig,
    step: int,
    max_length: int | None,
    counts: Counter,
) -> tuple[float, int]:
    """One optimizer step over ``chunks`` (the microbatches); returns (loss, tokens processed)."""
    from lm.train import clip_grad_norm_

    for g in opt.param_groups:
        g["lr"] = _lr_at(step, cfg)
    opt.zero_grad(set_to_none=True)
    step_loss, tokens = 0.0, 0
    for chunk in chunks:
        b = tokenize_prompt_and_output(
            [p for p, _ in chunk], [r for _, r in chunk], tokenizer, max_length=max_length, eot_id=tokenizer.eot_id
        )
        counts.update(b.counts)
        tokens += int(b.input_ids.numel())
        lp = get_response_log_probs(model, b.input_ids, b.labels)["log_probs"]
        if faults.inject("sft.loss", step):  # test-only (lm.faults)
            lp = lp * float("nan")
        if cfg.normalize == "tokens":
            # Σ/(tokens per sequence on average) averaged over sequences = mean NLL per token
            const = max(float(b.response_mask.sum()) / len(chunk), 1.0)
        else:
            const = cfg.normalize_constant
        loss, _ = sft_microbatch_train_step(lp, b.response_mask, cfg.gradient_accumulation_steps, const)
        step_loss += loss.item()
    check_loss("SFT", step, step_loss)  # before the update: no checkpoint of NaN weights
    if cfg.max_grad_norm > 0:
        clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    if faults.inject("sft.param", step):  # test-only (lm.faults)
        faults.poison_a_weight(model)
    return step_loss, tokens


def train_sft(
    model: torch.nn.Module,
    tokenizer,
    train_pairs: Sequence[tuple[str, str]],
    eval_pairs: Sequence[tuple[str, str]],
    cfg: SFTConfig,
    *,
    log: Callable[[dict], None] | None = None,
    probe_reward: Callable[[torch.nn.Module], float] | None = None,
) -> dict:
    """Fine-tune ``model`` in place. Returns a history: steps, losses, held-out NLL, counts.

    ``probe_reward(model)`` (e.g. greedy accuracy under a verifier on some training prompts)
    is recorded at each evaluation; with ``cfg.stop_at_reward`` training stops once it
    reaches that value. ``log`` (e.g. a progress reporter) gets one dict per step (step,
    total, loss, tokens) and one per evaluation (step, eval_nll, reward).
    """
    from lm.train import AdamW

    if not train_pairs:
        raise ValueError("train_sft needs at least one training pair")
    if cfg.batch_size % cfg.gradient_accumulation_steps:
        raise ValueError(
            f"batch_size={cfg.batch_size} is not divisible by "
            f"gradient_accumulation_steps={cfg.gradient_accumulation_steps}"
        )
    micro = cfg.batch_size // cfg.gradient_accumulation_steps
    max_length = max_length_for(model, cfg.max_length)
    opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    order: list[int] = []
    counts: Counter = Counter()
    hist: dict = {"step": [], "loss": [], "eval_step": [], "eval_nll": [], "probe_reward": [], "seconds": 0.0}
    say = log or (lambda row: None)
    t0 = time.time()

    def evaluate(step: int) -> None:
        hist["eval_step"].append(step)
        hist["eval_nll"].append(
            response_nll(model, tokenizer, eval_pairs, max_length=max_length) if eval_pairs else math.nan
        )
        if probe_reward is not None:
            hist["probe_reward"].append(probe_reward(model))
        say(
            {
                "step": step,
                "total": cfg.num_steps,
                "eval_nll": hist["eval_nll"][-1],
                **({"reward": hist["probe_reward"][-1]} if hist["probe_reward"] else {}),
            }
        )

    evaluate(0)
    model.train()
    for step in range(1, cfg.num_steps + 1):
        chunks = [
            [train_pairs[i] for i in next_indices(order, rng, len(train_pairs), micro)]
            for _ in range(cfg.gradient_accumulation_steps)
        ]
        step_loss, tokens = sft_step(model, tokenizer, opt, chunks, cfg, step, max_length, counts)
        hist["step"].append(step)
        hist["loss"].append(step_loss)
        say({"step": step, "total": cfg.num_steps, "loss": step_loss, "tokens": tokens})
        if eval_pairs and (step % cfg.eval_every == 0 or step == cfg.num_steps):
            evaluate(step)
            if (
                cfg.stop_at_reward is not None
                and hist["probe_reward"]
                and hist["probe_reward"][-1] >= cfg.stop_at_reward
            ):
                hist["stopped_at_step"] = step
                break
    check_weights("SFT", model, step)
    hist["seconds"] = round(time.time() - t0, 2)
    hist["counts"] = dict(counts)
    hist["nll_before"], hist["nll_after"] = hist["eval_nll"][0], hist["eval_nll"][-1]
    return hist
