"""Sampling responses from a policy: batched, with a KV cache when the model has one.

``generate_rollouts`` takes token-id prompts and returns the sampled continuation of each (without
the stop token). Prompts of equal length are decoded together in one batch (bucketing by
length keeps RoPE positions exact without an attention mask); a model with ``new_cache``
(our ``TransformerLM``) reuses keys/values, any other ``(B, T) -> logits`` module (a Hugging
Face causal LM) recomputes the prefix each step. Temperature 0 is greedy decoding.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lm.align.ops import model_logits


@dataclass
class Rollouts:
    """Sampled continuations (token ids, stop token excluded) in prompt order, and counts."""

    completions: list[list[int]]
    finished: list[bool]  # True: ended with a stop token; False: hit max_new_tokens or the context
    counts: Counter = field(default_factory=Counter)


def context_length(model) -> int | None:
    """The longest sequence ``model`` takes (our config, or a Hugging Face config), or None if unknown."""
    cfg = getattr(model, "config", None)
    for name in ("context_length", "max_position_embeddings", "n_positions"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    return None


@torch.no_grad()
def generate_rollouts(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    temperature: float = 1.0,
    top_k: int | None = None,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
) -> Rollouts:
    """Sample up to ``max_new_tokens`` after each prompt; stop a row at any of ``stop_ids``.

    A prompt longer than the model's context keeps its last tokens (counted as
    ``truncated_prompts``); generation stops at the context length (``hit_context``).
    ``on_batch(prompt indices, their completions)`` is called after each batch (progress).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = context_length(model)
    counts: Counter = Counter()
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    completions: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    buckets: dict[int, list[int]] = defaultdict(list)
    clipped: list[list[int]] = []
    for i, p in enumerate(prompts):
        p = list(p)
        if not p:
            raise ValueError(f"prompt {i} is empty: a prompt needs at least one token")
        if ctx is not None and len(p) >= ctx:
            counts["truncated_prompts"] += 1
            p = p[len(p) - (ctx - 1):]
        clipped.append(p)
        buckets[len(p)].append(i)
    for plen, idx in sorted(buckets.items()):
        steps = max_new_tokens if ctx is None else min(max_new_tokens, ctx - plen)
        for s in range(0, len(idx), batch_size):
            rows = idx[s: s + batch_size]
            ids = torch.tensor([clipped[i] for i in rows], dtype=torch.long, device=device)  # (b, plen)
            out, done = _sample_batch(model, ids, steps, stop, temperature, top_k, generator)
            for j, i in enumerate(rows):
                completions[i] = out[j]
                finished[i] = done[j]
                if not done[j] and steps < max_new_tokens:
                    counts["hit_context"] += 1
            if on_batch is not None:
                on_batch(rows, out)
    model.train(was_training)
    counts["rollouts"] += len(prompts)
    return Rollouts(completions, finished, counts)


def _sample_batch(model, ids, steps, stop, temperature, top_k, generator):
    b = ids.shape[0]
    use_cache = hasattr(model, "new_cache")
    cache = model.new_cache(b, ids.shape[1] + steps) if use_cache else None
    out = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool, device=ids.device)
    seq = ids
    logits = model(ids, cache) if use_cache else model_logits(model, ids)
    for _ in range(steps):
        nxt = _pick(logits[:, -1, :].float(), temperature, top_k, generator)  # (b,)
        is_stop = torch.isin(nxt, stop) if stop.numel() else torch.zeros_like(done)
        for j in range(b):
            if not done[j] and not is_stop[j]:
                out[j].append(int(nxt[j]))
        done |= is_stop
        if bool(done.all()):
            break
        if use_cache:
            logits = model(nxt[:, None], cache)
        else:
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            logits = model_logits(model, seq)
    return out, done.tolist()


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
