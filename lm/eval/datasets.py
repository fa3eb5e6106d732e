"""Loaders for the evaluation and alignment data sets, each into plain dict rows.

    load_gsm8k(path)        GSM8K jsonl {question, answer}      -> {id, question, answer, solution}
    load_mmlu(dir_or_csv)   MMLU csv (question,A,B,C,D,answer)  -> {id, subject, question, options, answer}
    load_alpaca_eval(path)  AlpacaEval jsonl {instruction, …}   -> {id, instruction, output, generator, dataset}
    load_sft_jsonl(path)    {prompt, response} jsonl            -> {id, prompt, response}

A malformed line never stops a load: it is skipped and counted in the returned Counter
(``bad_json``, ``missing_field``, ``bad_answer``), so callers can report it.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

from lm.eval.parse import gsm8k_ground_truth


def _read_jsonl(path: str | os.PathLike, required: tuple[str, ...], counts: Counter, limit: int | None):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a .jsonl file)")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f):
            if limit is not None and counts["rows"] >= limit:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                counts["bad_json"] += 1
                continue
            if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in required):
                counts["missing_field"] += 1
                continue
            counts["rows"] += 1
            yield lineno, row


def load_gsm8k(path: str | os.PathLike, limit: int | None = None) -> tuple[list[dict], Counter]:
    """GSM8K rows; ``answer`` is the final number, ``solution`` the full worked answer."""
    counts: Counter = Counter()
    rows = []
    for lineno, r in _read_jsonl(path, ("question", "answer"), counts, limit):
        try:
            final = gsm8k_ground_truth(r["answer"])
        except ValueError:
            counts["bad_answer"] += 1
            continue
        rows.append(
            {"id": f"{Path(path).stem}-{lineno}", "question": r["question"], "answer": final, "solution": r["answer"]}
        )
    return rows, counts


def load_mmlu(path: str | os.PathLike, limit: int | None = None) -> tuple[list[dict], Counter]:
    """MMLU rows from one ``<subject>_<split>.csv`` or every csv in a directory (sorted)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected an MMLU csv or a directory of them)")
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no .csv files in {path}")
    counts: Counter = Counter()
    rows = []
    for f in files:
        subject = f.stem.rsplit("_", 1)[0]
        with open(f, encoding="utf-8", newline="") as fh:
            for i, rec in enumerate(csv.reader(fh)):
                if limit is not None and len(rows) >= limit:
                    return rows, counts
                if len(rec) != 6 or rec[5].strip() not in {"A", "B", "C", "D"}:
                    counts["bad_row"] += 1
                    continue
                counts["rows"] += 1
                rows.append(
                    {
                        "id": f"{f.stem}-{i}",
                        "subject": subject,
                        "question": rec[0],
                        "options": rec[1:5],
                        "answer": rec[5].strip(),
                    }
                )
    return rows, counts


def load_alpaca_eval(path: str | os.PathLike, limit: int | None = None) -> tuple[list[dict], Counter]:
    counts: Counter = Counter()
    rows = [
        {
            "id": f"alpaca-{lineno}",
            "instruction": r["instruction"],
            "output": r.get("output", ""),
            "generator": r.get("generator", ""),
            "dataset": r.get("dataset", ""),
        }
        for lineno, r in _read_jsonl(path, ("instruction",), counts, limit)
    ]
    return rows, counts


def load_sft_jsonl(path: str | os.PathLike, limit: int | None = None) -> tuple[list[dict], Counter]:
    counts: Counter = Counter()
    rows = [
        {"id": f"{Path(path).stem}-{lineno}", "prompt": r["prompt"], "response": r["response"]}
        for lineno, r in _read_jsonl(path, ("prompt", "response"), counts, limit)
    ]
    return rows, counts
