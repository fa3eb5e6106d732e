"""Direct Preference Optimization against a frozen reference model.

loss = −log σ(β·((log πθ(c) − log πref(c)) − (log πθ(r) − log πref(r)))) per (prompt,
chosen, rejected) triple, where log π(·) is the summed log-probability of the response
tokens, end-of-text included (so "8" and "89" differ), given the prompt. A triple with
chosen == rejected carries no preference: it is skipped and counted (``skipped_identical``).
The reference's log-probs are computed once, up front, since the reference never changes.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

import torch
from pydantic import Field

from lm import faults
from lm.align.batches import TokenizedBatch, next_indices, tokenize_prompt_and_output
from lm.align.guard import check_loss, check_weights
from lm.align.losses import dpo_loss
from lm.align.ops import sequence_log_probs
from lm.align.sft import max_length_for
from lm.config import Config

Triple = tuple[str, str, str]  # (prompt, chosen, rejected)


class DPOConfig(Config):
    """Hyperparameters of the DPO loop."""

    beta: float = Field(0.1, gt=0, description="DPO β: strength of the implicit KL penalty to the reference.")
    num_steps: int = Field(100, ge=1, le=1000000000, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, le=1 << 16, description="Preference pairs per optimizer step.")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate.")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = off).")
    max_length: int | None = Field(
        None, ge=2, le=1 << 20, description="Cap on prompt+response tokens (default: model context + 1)."
    )
    eval_every: int = Field(
        25, ge=1, le=1000000000, description="Measure held-out preference accuracy every this many steps."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for batch order.")


def split_identical(triples: Sequence[Triple]) -> tuple[list[Triple], int]:
    """Drop pairs whose chosen and rejected responses are the same text; return (kept, skipped)."""
    kept = [t for t in triples if t[1] != t[2]]
    return kept, len(triples) - len(kept)


def _pair_logps(
    model, tokenizer, triples: Sequence[Triple], max_length: int | None
) -> tuple[torch.Tensor, torch.Tensor, TokenizedBatch]:
    """Summed response log-probs of chosen and rejected, each (B,), one forward over 2B rows (and those rows)."""
    prompts = [t[0] for t in triples] * 2
    responses = [t[1] for t in triples] + [t[2] for t in triples]
    b = tokenize_prompt_and_output(
        prompts, responses, tokenizer, max_length=max_length, eot_id=getattr(tokenizer, "eot_id", None)
    )
    lp = sequence_log_probs(model, b.input_ids, b.labels, b.response_mask)  # (2B,)
    return lp[: len(triples)], lp[len(triples) :], b


def per_instance_dpo_loss(
    lm, lm_ref, tokenizer, beta: float, prompt: str, response_chosen: str, response_rejected: str
) -> torch.Tensor:
    """The DPO loss of one preference pair (the CS336 adapter's signature)."""
    pc, pr, _ = _pair_logps(lm, tokenizer, [(prompt, response_chosen, response_rejected)], None)
    with torch.no_grad():
        rc, rr, _ = _pair_logps(lm_ref, tokenizer, [(prompt, response_chosen, response_rejected)], None)
    return dpo_loss(pc, pr, rc, rr, beta)[0][0]


@torch.no_grad()
def reference_logps(
    ref, tokenizer, triples: Sequence[Triple], max_length: int | None, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    ref.eval()
    cs, rs = [], []
    for s in range(0, len(triples), batch_size):
        c, r, _ = _pair_logps(ref, tokenizer, triples[s : s + batch_size], max_length)
        cs.append(c)
        rs.append(r)
    return torch.cat(cs), torch.cat(rs)


@torch.no_grad()
def preference_metrics(
    model,
    tokenizer,
    triples: Sequence[Triple],
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    beta: float,
    max_length: int | None,
    batch_size: int = 32,
) -> dict:
    """Held-out DPO loss, preference accuracy (margin > 0) and mean reward margin."""
    was = model.training
    model.eval()
    losses, accs, margins = [], [], []
    for s in range(0, len(triples), batch_size):
        c, r, _ = _pair_logps(model, tokenizer, triples[s : s + batch_size], max_length)
        loss, meta = dpo_loss(c, r, ref_c[s : s + batch_size], ref_r[s : s + batch_size], beta)
        losses.append(loss)
        accs.append(meta["accuracy"])
        margins.append(meta["margin"])
    model.train(was)
    return {
        "loss": torch.cat(losses).mean().item(),
        "accuracy": torch.cat(accs).mean().item(),
        "margin": torch.cat(margins).mean().item(),
    }


@torch.no_grad()
def likelihood_accuracy(
    model, tokenizer, triples: Sequence[Triple], max_length: int | None = None, batch_size: int = 32
) -> float:
    """Fraction of pairs where the model gives the chosen response a higher log-probability.

    DPO's own accuracy (implicit-reward margin > 0) is 0 at step 0, when policy == reference;
    this compares the model with itself, so it means the same before and after training.
    """
    was = model.training
    model.eval()
    wins = []
    for s in range(0, len(triples), batch_size):
        c, r, _ = _pair_logps(model, tokenizer, triples[s : s + batch_size], max_length)
        wins.append((c > r).float())
    model.train(was)
    return torch.cat(wins).mean().item() if wins else float("nan")


def dpo_step(
    model,
    tokenizer,
    opt,
    batch: Sequence[Triple],
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    cfg: DPOConfig,
    step: int,
    max_length: int | None,
    counts: Counter,
) -> dict:
    """One optimizer step on ``batch`` against the reference log-probs of the same pairs."""
    from lm.train import clip_grad_norm_

    c, r, b = _pair_logps(model, tokenizer, batch, max_length)
    counts.update(b.counts)
    loss, meta = dpo_loss(c, r, ref_c, ref_r, cfg.beta)
    if faults.inject("dpo.loss", step):  # test-only (lm.faults)
        loss = loss * float("nan")
    check_loss("DPO", step, loss.mean().item())  # before the update: no checkpoint of NaN weights
    opt.zero_grad(set_to_none=True)
    loss.mean().backward()
    if cfg.max_grad_norm > 0:
        clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    return {
        "loss": loss.mean().item(),
        "train_accuracy": meta["accuracy"].mean().item(),
        "margin": meta["margin"].mean().item(),
        "tokens": int(b.input_ids.numel()),
    }


def train_dpo(
    model: torch.nn.Module,
    ref: torch.nn.Module,
    tokenizer,
    train_triples: Sequence[Triple],
    eval_triples: Sequence[Triple],
    cfg: DPOConfig,
    *,
    log: Callable[[dict], None] | None = None,
) -> dict:
    """Train ``model`` in place with DPO against the frozen ``ref``. Returns a history.

    ``log`` (e.g. a progress reporter) gets one dict per step (step, total, loss,
    train_accuracy, margin, tokens) and one per evaluation (step, eval_accuracy, eval_loss).
    """
    from lm.train import AdamW

    train, skipped_train = split_identical(train_triples)
    evals, skipped_eval = split_identical(eval_triples)
    if not train:
        raise ValueError(f"no usable preference pairs: all {len(train_triples)} have chosen == rejected")
    for p in ref.parameters():
        p.requires_grad_(False)
    max_length = max_length_for(model, cfg.max_length)
    t0 = time.time()
    ref_c, ref_r = reference_logps(ref, tokenizer, train, max_length)
    ev_c, ev_r = reference_logps(ref, tokenizer, evals, max_length) if evals else (torch.empty(0), torch.empty(0))
    opt = AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    counts: Counter = Counter({"skipped_identical": skipped_train + skipped_eval})
    hist: dict = {
        "step": [],
        "loss": [],
        "train_accuracy": [],
        "margin": [],
        "eval_step": [],
        "eval_accuracy": [],
        "eval_margin": [],
        "eval_loss": [],
    }
    say = log or (lambda row: None)

    def evaluate(step: int) -> None:
        if not evals:
            return
        m = preference_metrics(model, tokenizer, evals, ev_c, ev_r, cfg.beta, max_length)
        for k in ("accuracy", "margin", "loss"):
            hist[f"eval_{k}"].append(m[k])
        hist["eval_step"].append(step)
        say({"step": step, "total": cfg.num_steps, "eval_accuracy": m["accuracy"], "eval_loss": m["loss"]})

    evaluate(0)
    hist["likelihood_accuracy_before"] = (
        likelihood_accuracy(model, tokenizer, evals, max_length) if evals else float("nan")
    )
    model.train()
    order: list[int] = []
    for step in range(1, cfg.num_steps + 1):
        idx = next_indices(order, rng, len(train), min(cfg.batch_size, len(train)))
        batch = [train[i] for i in idx]
        m = dpo_step(model, tokenizer, opt, batch, ref_c[idx], ref_r[idx], cfg, step, max_length, counts)
        hist["step"].append(step)
        for k in ("loss", "train_accuracy", "margin"):
            hist[k].append(m[k])
        say({"step": step, "total": cfg.num_steps, **m})
        if step % cfg.eval_every == 0 or step == cfg.num_steps:
            evaluate(step)
    check_weights("DPO", model, cfg.num_steps)
    hist["likelihood_accuracy_after"] = (
        likelihood_accuracy(model, tokenizer, evals, max_length) if evals else float("nan")
    )
    hist["seconds"] = round(time.time() - t0, 2)
    hist["counts"] = dict(counts)
    return hist
