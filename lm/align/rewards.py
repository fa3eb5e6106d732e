"""Verifiers: functions ``(response, ground_truth) -> {"reward", "format_reward", "answer_reward"}``.

A verifier gives 1.0 for a right answer and 0.0 otherwise; it may raise on a malformed
ground truth, and callers (:func:`lm.align.losses.compute_group_normalized_rewards`,
:func:`score_responses`) turn a raise into reward 0 and count it, so one bad record never
stops a rollout batch or an evaluation.

    gsm8k_reward        last number in the response == the '#### N' answer (numerically)
    arithmetic_reward   the response's first line is exactly the integer answer
    r1_zero_reward      "<think> … </think> <answer> … </answer>" format + answer match
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

from lm.eval.parse import gsm8k_ground_truth, numbers_equal, parse_gsm8k_response

RewardFn = Callable[[str, str], dict[str, float]]
_INT = re.compile(r"^-?\d+$")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _scores(fmt: float, ans: float, reward: float | None = None) -> dict[str, float]:
    return {"format_reward": fmt, "answer_reward": ans, "reward": ans if reward is None else reward}


def _truth_number(ground_truth: str) -> str:
    """Accept either a bare number or a whole GSM8K solution ending in '#### N'."""
    if "####" in ground_truth:
        return gsm8k_ground_truth(ground_truth)
    num = parse_gsm8k_response(ground_truth)
    if num is None or num != ground_truth.strip().replace(",", ""):
        raise ValueError(f"ground truth {ground_truth!r} is not a number")
    return num


def gsm8k_reward(response: str, ground_truth: str) -> dict[str, float]:
    """1 if the last number in ``response`` equals the ground truth number; format = a number exists."""
    truth = _truth_number(ground_truth)
    pred = parse_gsm8k_response(response)
    if pred is None:
        return _scores(0.0, 0.0)
    return _scores(1.0, float(numbers_equal(pred, truth)))


def arithmetic_reward(response: str, ground_truth: str) -> dict[str, float]:
    """Exact arithmetic: the response's first line, stripped, must be the integer answer.

    Format reward 1 when that line is an integer at all (right or wrong). Stricter than
    "last number" so that a model cannot win by emitting many numbers.
    """
    truth = ground_truth.strip()
    if not _INT.match(truth):
        raise ValueError(f"arithmetic ground truth {ground_truth!r} is not an integer")
    line = response.strip().split("\n", 1)[0].strip() if response.strip() else ""
    if not _INT.match(line):
        return _scores(0.0, 0.0)
    return _scores(1.0, float(int(line) == int(truth)))


def r1_zero_reward(response: str, ground_truth: str) -> dict[str, float]:
    """R1-Zero format: the response (after the prompt's "<think>") has "</think> <answer>…</answer>".

    Format reward 1 for the tags; answer reward 1 when the number in the answer tag equals
    the ground truth. Reward = answer reward only when the format is right.
    """
    truth = _truth_number(ground_truth)
    fmt_ok = "</think> <answer>" in response and "</answer>" in response
    if not fmt_ok:
        return _scores(0.0, 0.0)
    m = _ANSWER_TAG.search(response)
    pred = parse_gsm8k_response(m.group(1)) if m else None
    ans = float(pred is not None and numbers_equal(pred, truth))
    return _scores(1.0, ans)


REWARD_FNS: dict[str, RewardFn] = {
    "gsm8k": gsm8k_reward,
    "arithmetic": arithmetic_reward,
    "r1_zero": r1_zero_reward,
}


def get_reward_fn(name: str) -> RewardFn:
    if name not in REWARD_FNS:
        raise ValueError(f"unknown verifier {name!r}; choose one of {sorted(REWARD_FNS)}")
    return REWARD_FNS[name]


def score_responses(
    reward_fn: RewardFn, responses: Sequence[str], ground_truths: Sequence[str]
) -> tuple[list[dict[str, float]], Counter]:
    """Score each response; a verifier that raises scores 0 and is counted by exception type."""
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    out, errors = [], Counter()
    for r, t in zip(responses, ground_truths):
        try:
            out.append(reward_fn(r, t))
        except Exception as e:  # counted, never fatal: see module docstring
            errors[type(e).__name__] += 1
            out.append({**_scores(0.0, 0.0), "error": 1.0})
    return out, errors
