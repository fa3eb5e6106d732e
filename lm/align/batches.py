"""Turn (prompt, response) text into training tensors: padded batches with a response mask,
and packed fixed-length examples.

Works with any tokenizer that has ``encode(str) -> list[int]`` (our BPE ``Tokenizer``, a
Hugging Face tokenizer through :class:`lm.tokenizer.load.HFTokenizerAdapter`, the demo's byte tokenizer).
Prompt and response are encoded separately and concatenated, so the mask boundary is exact
even where a merge could have crossed it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class TokenizedBatch:
    """A padded batch. ``labels`` are ``input_ids`` shifted by one; all tensors (B, T)."""

    input_ids: Tensor
    labels: Tensor
    response_mask: Tensor
    counts: Counter = field(default_factory=Counter)  # e.g. truncated responses, empty responses

    def as_dict(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "labels": self.labels, "response_mask": self.response_mask}


def tokenize_prompt_and_output(
    prompt_strs: Sequence[str],
    output_strs: Sequence[str],
    tokenizer,
    *,
    pad_id: int | None = None,
    max_length: int | None = None,
    eot_id: int | None = None,
) -> TokenizedBatch:
    """Tokenize prompt+response pairs into a right-padded batch with a response mask.

    Each row is ``prompt_ids + output_ids`` padded with ``pad_id`` to the longest row; then
    ``input_ids = row[:-1]`` and ``labels = row[1:]``, so both are (B, L - 1) where L is the
    longest prompt+response. ``response_mask`` is True where the label is a response token.

    ``eot_id``, when given, ends every response (a response token, so the model learns to
    stop). ``max_length`` caps L (the model's context + 1): a longer row keeps its prompt and the
    start of its response (the response is cut, counted in ``counts["truncated_responses"]``);
    if the prompt alone does not fit, its beginning is dropped so the response's first token
    is still a label (counted in ``counts["truncated_prompts"]``).
    """
    if len(prompt_strs) != len(output_strs):
        raise ValueError(f"got {len(prompt_strs)} prompts but {len(output_strs)} outputs; they must pair up")
    if not prompt_strs:
        raise ValueError("tokenize_prompt_and_output needs at least one prompt/output pair")
    if pad_id is None:
        pad_id = _default_pad_id(tokenizer)
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length={max_length}: needs at least 2 tokens (one input, one label)")
    counts: Counter = Counter()
    rows: list[tuple[list[int], list[int]]] = []
    for prompt, output in zip(prompt_strs, output_strs):
        p, o = list(tokenizer.encode(prompt)), list(tokenizer.encode(output))
        if eot_id is not None:
            o.append(eot_id)
        if not output:
            counts["empty_responses"] += 1
        if max_length is not None and len(p) + len(o) > max_length:
            if len(p) >= max_length:
                counts["truncated_prompts"] += 1
                p = p[len(p) - (max_length - 1) :] if max_length > 1 else []
            keep = max_length - len(p)
            if keep < len(o):
                counts["truncated_responses"] += 1
                o = o[:keep]
        rows.append((p, o))
    length = max(len(p) + len(o) for p, o in rows)
    full = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, (p, o) in enumerate(rows):
        full[i, : len(p) + len(o)] = torch.tensor(p + o, dtype=torch.long)
        mask[i, len(p) : len(p) + len(o)] = True
    return TokenizedBatch(full[:, :-1], full[:, 1:], mask[:, 1:], counts)


def _default_pad_id(tokenizer) -> int:
    for name in ("pad_id", "eot_id", "pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    raise ValueError("pass pad_id: the tokenizer has no pad_id / eot_id / pad_token_id / eos_token_id")


def pack_examples(
    texts: Sequence[tuple[str, str]],
    tokenizer,
    seq_length: int,
    *,
    eot_id: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
) -> list[dict[str, Tensor]]:
    """Pack (prompt, response) documents into examples of exactly ``seq_length`` tokens.

    Documents are concatenated, each followed by ``eot_id``, and cut into windows of
    ``seq_length + 1`` tokens (no padding, nothing wasted but the incomplete tail); each
    example has ``input_ids`` = window[:-1], ``labels`` = window[1:] and a ``response_mask``
    that is True on response tokens and the document's end-of-text (the model must learn to
    stop). Documents cross window boundaries, as in pretraining.
    """
    if seq_length < 1:
        raise ValueError(f"seq_length={seq_length}: must be >= 1")
    if eot_id is None:
        eot_id = _default_pad_id(tokenizer)
    order = list(range(len(texts)))
    if shuffle:
        random.Random(seed).shuffle(order)
    ids: list[int] = []
    resp: list[bool] = []
    for i in order:
        prompt, response = texts[i]
        p, o = tokenizer.encode(prompt), tokenizer.encode(response)
        ids += list(p) + list(o) + [eot_id]
        resp += [False] * len(p) + [True] * (len(o) + 1)
    out = []
    for start in range(0, len(ids) - seq_length, seq_length):
        window = torch.tensor(ids[start : start + seq_length + 1], dtype=torch.long)
        m = torch.tensor(resp[start + 1 : start + seq_length + 1], dtype=torch.bool)
        out.append({"input_ids": window[:-1], "labels": window[1:], "response_mask": m})
    return out


def iterate_batches(
    examples: Sequence[dict[str, Tensor]], batch_size: int, *, shuffle: bool = False, seed: int = 0
) -> Iterator[dict[str, Tensor]]:
    """One epoch over fixed-length examples in batches of ``batch_size`` (the last may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    order = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for s in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[s : s + batch_size]]
        yield {k: torch.stack([c[k] for c in chunk]) for k in chunk[0]}


def next_indices(order: list[int], rng: random.Random, num_items: int, n: int) -> list[int]:
    """``n`` indices into ``num_items`` items, each pass over them in a fresh shuffled order.

    ``order`` holds what is left of the current pass and is consumed in place, so successive
    calls continue the same pass (the SFT, DPO and GRPO loops keep one between steps).
    """
    idx = []
    while len(idx) < n:
        if not order:
            order.extend(range(num_items))
            rng.shuffle(order)
        idx.append(order.pop())
    return idx


def batch_from_ids(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int) -> TokenizedBatch:
    """Like :func:`tokenize_prompt_and_output` for text already in token ids (sampled rollouts).

    Using the sampled ids directly (not decode→encode) scores exactly the tokens the policy
    chose, which a re-tokenization could split differently.
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"got {len(prompts)} prompts and {len(responses)} responses; need equal, non-zero counts")
    length = max(len(p) + len(r) for p, r in zip(prompts, responses))
    full = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        full[i, : len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
        mask[i, len(p) : len(p) + len(r)] = True
    return TokenizedBatch(full[:, :-1], full[:, 1:], mask[:, 1:])
