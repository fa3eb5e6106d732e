"""Evaluations that write one row per problem: GSM8K, MMLU, arithmetic, and perplexity.

Each generation task renders a prompt, decodes greedily, parses an answer and compares it
with the ground truth; the rows (``EVAL_SCHEMA``) keep prompt, generation, parsed answer and
correctness so a person can read what the model did, not only the score.

    gsm8k       last number in the generation == the '#### N' answer
    mmlu        option letter parsed from the generation == the answer letter
    arithmetic  first line of the generation == the integer answer (the demo task)
    perplexity  exp(mean NLL per token) of held-out text (``perplexity()``)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import pyarrow as pa
import torch

from lm.align.data import render
from lm.align.ops import get_response_log_probs
from lm.align.rewards import arithmetic_reward, gsm8k_reward
from lm.align.rollout import generate_rollouts
from lm.eval.parse import parse_gsm8k_response, parse_mmlu_response

EVAL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("prompt", pa.string()),
        ("generation", pa.string()),
        ("parsed", pa.string()),
        ("answer", pa.string()),
        ("correct", pa.bool_()),
    ]
)
TASKS = ("gsm8k", "mmlu", "arithmetic")


def mmlu_question(row: dict) -> str:
    opts = "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", row["options"]))
    return f"Answer the following multiple choice question about {row['subject'].replace('_', ' ')}.\n\n{row['question']}\n{opts}"


def _grade(task: str, row: dict, generation: str) -> tuple[str | None, bool]:
    """(parsed answer, correct). A grader that raises on a malformed record counts as wrong."""
    if task == "gsm8k":
        return parse_gsm8k_response(generation), gsm8k_reward(generation, row["answer"])["reward"] == 1.0
    if task == "mmlu":
        parsed = parse_mmlu_response(row, generation)
        return parsed, parsed == row["answer"]
    if task == "arithmetic":
        line = generation.strip().split("\n", 1)[0].strip()
        return line or None, arithmetic_reward(generation, row["answer"])["reward"] == 1.0
    raise ValueError(f"unknown eval task {task!r}; choose one of {TASKS}")


def evaluate_generation(
    model,
    tokenizer,
    task: str,
    rows: Sequence[dict],
    *,
    template: str = "{question}",
    max_new_tokens: int = 256,
    batch_size: int = 32,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], Counter]:
    """Greedy-decode every row's prompt and grade it. Returns (EVAL_SCHEMA rows, counts).

    Rows are graded as their generation batch finishes; ``on_batch(graded, correct)`` then
    reports the totals so far (progress).
    """
    if task not in TASKS:
        raise ValueError(f"unknown eval task {task!r}; choose one of {TASKS}")
    prompts = [render(template, question=mmlu_question(r) if task == "mmlu" else r["question"]) for r in rows]
    out: list[dict | None] = [None] * len(rows)
    errors: list[str | None] = [None] * len(rows)
    graded = correct = 0

    def grade(idx: list[int], completions: list[list[int]]) -> None:
        nonlocal graded, correct
        for i, ids in zip(idx, completions):
            r, gen = rows[i], tokenizer.decode(ids)
            try:
                parsed, ok = _grade(task, r, gen)
            except Exception as e:  # a malformed record is graded wrong and counted, never fatal
                errors[i] = f"grader_error:{type(e).__name__}"
                parsed, ok = None, False
            correct += int(ok)
            out[i] = {"id": str(r["id"]), "task": task, "prompt": prompts[i], "generation": gen, "parsed": parsed, "answer": str(r["answer"]), "correct": ok}
        graded += len(idx)
        if on_batch is not None:
            on_batch(graded, correct)

    ro = generate_rollouts(model, [tokenizer.encode(p) for p in prompts], max_new_tokens=max_new_tokens, stop_ids=[tokenizer.eot_id],
                  temperature=0.0, batch_size=batch_size, on_batch=grade)
    counts: Counter = Counter(ro.counts)
    for o, err in zip(out, errors):  # in row order: the counts read the same whatever order batches finish in
        if err:
            counts[err] += 1
        counts["correct"] += int(o["correct"])
        counts["unparsed"] += int(o["parsed"] is None)
    return out, counts


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], *, context_length: int | None = None) -> dict:
    """Perplexity of ``texts``: each text is cut into context-sized windows, every token scored once.

    A text the tokenizer cannot encode (a character outside a char tokenizer's alphabet) is
    skipped and counted in ``unencodable``.
    """
    ctx = context_length or getattr(getattr(model, "config", None), "context_length", None) or 1024
    was = model.training
    model.eval()
    nll, n, windows, bad = 0.0, 0, 0, 0
    for text in texts:
        try:
            ids = list(tokenizer.encode(text)) + [tokenizer.eot_id]
        except ValueError:
            bad += 1
            continue
        for s in range(0, len(ids) - 1, ctx):
            chunk = torch.tensor(ids[s: s + ctx + 1], dtype=torch.long)[None]
            if chunk.shape[1] < 2:
                continue
            lp = get_response_log_probs(model, chunk[:, :-1], chunk[:, 1:])["log_probs"]
            nll -= lp.sum().item()
            n += lp.numel()
            windows += 1
    model.train(was)
    mean = nll / max(n, 1)
    return {"tokens": n, "windows": windows, "unencodable": bad, "nll": mean, "perplexity": math.exp(mean) if n else math.nan}
