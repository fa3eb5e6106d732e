"""The demo task: multi-digit addition, small enough for a CPU-trained model to learn.

A problem is ``"47+38="`` with answer ``"85"``; the tokenizer is character-level (digits,
'+', '=' and end-of-text), so a 2-layer Transformer learns the task in minutes on a CPU.
The demo chain is: ``make_base_model`` (short language-model pretraining on problem text,
deliberately stopped early so the model is right only part of the time) → SFT on
(prompt, answer) pairs → DPO on (correct, wrong) answers → GRPO with the exact-arithmetic
verifier. Train and held-out problems are disjoint.
"""

from __future__ import annotations

import random
import time

import torch

from lm.tokenizer.load import CharTokenizer

ALPHABET = "0123456789+="


def addition_problems(n: int, digits: int, seed: int, exclude: set[str] | None = None) -> list[tuple[str, str]]:
    """``n`` distinct (prompt, answer) pairs with operands of 1..``digits`` digits, none in ``exclude``."""
    hi = 10**digits
    if n > hi * hi - len(exclude or ()):
        raise ValueError(f"only {hi * hi} distinct problems with {digits} digits; asked for {n}")
    rng = random.Random(seed)
    seen, out = set(exclude or ()), []
    while len(out) < n:
        a, b = rng.randrange(hi), rng.randrange(hi)
        prompt = f"{a}+{b}="
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append((prompt, str(a + b)))
    return out


def split_problems(num_train: int, num_eval: int, digits: int, seed: int) -> tuple[list, list]:
    """Disjoint train and held-out problem lists."""
    evals = addition_problems(num_eval, digits, seed + 1)
    train = addition_problems(num_train, digits, seed, exclude={p for p, _ in evals})
    return train, evals


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer: the right one off by a small amount (never equal, never negative)."""
    a = int(answer)
    delta = rng.choice([-10, -2, -1, 1, 2, 10])
    w = a + delta if a + delta >= 0 else a + abs(delta)
    return str(w)


def demo_tokenizer() -> CharTokenizer:
    return CharTokenizer(ALPHABET)


def make_base_model(
    train: list[tuple[str, str]],
    *,
    model_config: dict,
    num_steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[torch.nn.Module, CharTokenizer, dict]:
    """Pretrain a TransformerLM on ``"a+b=c<eot>"`` text (every token carries loss).

    Stopped early on purpose: the demo needs a model that is sometimes right, so that
    alignment has something to improve and GRPO's groups have reward variance.
    """
    from lm.align.batches import pack_examples
    from lm.model import ModelConfig, TransformerLM
    from lm.train import AdamW, clip_grad_norm_, cross_entropy

    torch.manual_seed(seed)
    tok = demo_tokenizer()
    cfg = ModelConfig.model_validate({**model_config, "vocab_size": tok.vocab_size})
    model = TransformerLM(cfg)
    # Packed text, as pretraining sees it: problems back to back, separated by end-of-text.
    examples = pack_examples(train, tok, seq_length=cfg.context_length, shuffle=True, seed=seed)
    ids = torch.stack([e["input_ids"] for e in examples])
    labels = torch.stack([e["labels"] for e in examples])
    opt = AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    t0 = time.time()
    model.train()
    for _step in range(num_steps):
        idx = torch.randint(0, ids.shape[0], (batch_size,), generator=g)
        loss = cross_entropy(model(ids[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return model, tok, {"loss": losses, "seconds": round(time.time() - t0, 2), "num_examples": int(ids.shape[0])}
