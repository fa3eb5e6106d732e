"""Parse model outputs into answers: the last number (GSM8K), an option letter (MMLU)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

# A number as people write it: optional sign, thousands separators, decimals ("-1,234.5").
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LETTER_PATTERNS = [
    re.compile(r"[Aa]nswer\s*(?:is|:)\s*:?\s*\(?([ABCD])\)?(?![A-Za-z])"),  # "the answer is (B)"
    re.compile(r"^\s*\(?([ABCD])(?:[.):]|\s*$)"),  # "B." / "(B)" / "B" as the whole output; not "A lesion…"
    re.compile(r"\(([ABCD])\)"),  # "(C)" anywhere
]


def parse_gsm8k_response(model_output: str) -> str | None:
    """The last number in the output, without thousands separators ("1,234" -> "1234"), or None."""
    matches = _NUMBER.findall(model_output or "")
    if not matches:
        return None
    num = matches[-1].replace(",", "")
    return num.rstrip(".") or None


def gsm8k_ground_truth(answer: str) -> str:
    """The final answer of a GSM8K solution (the text after '####'). Raises if there is none."""
    if "####" not in answer:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer[-80:]!r}")
    num = parse_gsm8k_response(answer.split("####")[-1])
    if num is None:
        raise ValueError(f"GSM8K answer has no number after '####': {answer[-80:]!r}")
    return num


def numbers_equal(a: str, b: str) -> bool:
    """Numeric equality of two number strings ("18" == "18.0" == "18.00"); raises on non-numbers."""
    try:
        return Decimal(a.replace(",", "")) == Decimal(b.replace(",", ""))
    except InvalidOperation as e:
        raise ValueError(f"not a number: {a!r} or {b!r}") from e


def parse_mmlu_response(mmlu_example: Mapping, model_output: str) -> str | None:
    """The option letter (A-D) the output chooses, or None.

    Tries, in order: "the answer is (B)" / "Answer: B"; an output that is or starts with
    "B." / "(B)"; "(B)" anywhere; the output containing exactly one option's text. The
    article "A" ("A lesion …") is not taken for option A.
    """
    text = model_output or ""
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    options = list(mmlu_example.get("options", []))
    hits = [i for i, opt in enumerate(options) if opt and opt.strip().lower() in text.lower()]
    if len(hits) == 1:
        return "ABCD"[hits[0]]
    return None
