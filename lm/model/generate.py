"""Sampling from a TransformerLM: temperature, top-p, end-of-text stop, and a KV cache.

    from lm.model import load_model
    from lm.model.generate import generate
    from lm.tokenizer.load import load_tokenizer
    model = load_model("outputs/pretrain/<fp>/checkpoint")
    ids = generate(model, [1, 2, 3], max_new_tokens=50, temperature=0.8, top_p=0.95, eot_id=256)

With the cache (default) the prompt is run once and each new token costs one position; without
it the whole sequence is re-run every step. Both give the same tokens (tested). RoPE positions
are absolute, so a sequence never grows past ``context_length``: the prompt keeps its last
``context_length - 1`` tokens and generation stops at ``context_length``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lm.model import load_model
from lm.model.transformer import TransformerLM
from lm.tokenizer.load import load_tokenizer


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits (B, V) -> next ids (B,). temperature 0 = greedy; top_p < 1 samples from the nucleus."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: TransformerLM,
    prompt: list[int] | torch.Tensor,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eot_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> list[int]:
    """New token ids after ``prompt`` (the eot token, when hit, is the last one returned)."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature ≥ 0 and 0 < top_p ≤ 1, got temperature={temperature}, top_p={top_p}")
    ctx = model.config.context_length
    ids = torch.as_tensor(prompt, dtype=torch.long).flatten()[-(ctx - 1) :]
    if ids.numel() == 0:
        raise ValueError("prompt is empty: give at least one token id (e.g. the end-of-text id)")
    if int(ids.max()) >= model.config.vocab_size:
        raise ValueError(f"prompt token id {int(ids.max())} ≥ vocab_size={model.config.vocab_size}")
    device = model.token_embeddings.weight.device
    seq = ids.to(device)[None]  # (1, T)
    budget = min(max_new_tokens, ctx - seq.shape[1])
    was_training = model.training
    model.eval()
    cache = model.new_cache(1) if use_cache else None
    out: list[int] = []
    step_input = seq
    for _ in range(budget):
        logits = model(step_input if use_cache else seq, cache)[:, -1]  # (1, V)
        nxt = sample_next(logits, temperature, top_p, generator)  # (1,)
        out.append(int(nxt))
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
        if eot_id is not None and out[-1] == eot_id:
            break
    model.train(was_training)
    return out


def checkpoint_tokenizer(checkpoint_dir: str | Path) -> tuple[str | None, int | None]:
    """(tokenizer dir or "bytes", eot id) recorded in a checkpoint's meta.json by the trainer."""
    meta = json.loads((Path(checkpoint_dir) / "meta.json").read_text())
    data = (meta.get("extra") or {}).get("data") or {}
    return data.get("tokenizer"), data.get("eot_id")


def generate_text(model: TransformerLM, tokenizer, prompt: str, eot_id: int | None = None, **kw) -> str:
    """Decode(generate(encode(prompt))): the continuation only."""
    ids = tokenizer.encode(prompt) or ([eot_id] if eot_id is not None else [])
    return tokenizer.decode(generate(model, ids, eot_id=eot_id, **kw))


def generate_from_checkpoint(
    checkpoint: str | Path,
    prompt: str,
    *,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    device: str = "cpu",
) -> str:
    """Prompt + continuation from a checkpoint directory or a pretrain stage directory (its manifest's checkpoint)."""
    path = Path(checkpoint)
    if not (path / "meta.json").exists() and (path / "_manifest.json").exists():
        path = Path(json.loads((path / "_manifest.json").read_text())["checkpoint"])
    model = load_model(path, device)
    tok_dir, eot_id = checkpoint_tokenizer(path)
    g = torch.Generator(device=device).manual_seed(seed)
    return prompt + generate_text(
        model,
        load_tokenizer(tok_dir),
        prompt,
        eot_id=eot_id,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        generator=g,
    )
