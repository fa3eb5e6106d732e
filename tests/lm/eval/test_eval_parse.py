"""Answer parsing and the real GSM8K / MMLU / AlpacaEval loaders."""

import pytest

from lm.eval.datasets import load_alpaca_eval, load_gsm8k, load_mmlu, load_sft_jsonl
from lm.eval.parse import gsm8k_ground_truth, parse_gsm8k_response, parse_mmlu_response


def test_parse_gsm8k():
    assert parse_gsm8k_response("She makes 9 * 2 = $18 every day.") == "18"
    assert parse_gsm8k_response("It costs $1,234.50 total") == "1234.50"
    assert parse_gsm8k_response("temperature fell to -3.") == "-3"
    assert parse_gsm8k_response("no digits") is None
    assert parse_gsm8k_response("") is None


def test_parse_mmlu():
    ex = {"options": ["Paris", "London", "Rome", "Berlin"]}
    assert parse_mmlu_response(ex, "The correct answer is B") == "B"
    assert parse_mmlu_response(ex, "Answer: (C) because") == "C"
    assert parse_mmlu_response(ex, "D. Berlin") == "D"
    assert parse_mmlu_response(ex, "A lesion of the nerve") is None  # the article is not option A
    assert parse_mmlu_response(ex, "I would say Rome.") == "C"  # exactly one option's text
    assert parse_mmlu_response(ex, "the answer is a guess") is None
    assert parse_mmlu_response(ex, "no idea") is None


def test_load_gsm8k(reference, tmp_path):
    rows, counts = load_gsm8k(reference / "assignment5-alignment/data/gsm8k/test.jsonl")
    assert len(rows) == 1319 and counts["rows"] == 1319
    assert rows[0]["answer"] == "18" and rows[0]["question"].startswith("Janet")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"question": "q", "answer": "#### 4"}\nnot json\n{"question": "q"}\n{"question": "q", "answer": "no marker"}\n'
    )
    rows, counts = load_gsm8k(bad)
    assert [r["answer"] for r in rows] == ["4"]
    assert counts["bad_json"] == 1 and counts["missing_field"] == 1 and counts["bad_answer"] == 1
    with pytest.raises(FileNotFoundError):
        load_gsm8k(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="####"):
        gsm8k_ground_truth("no final answer")


def test_load_mmlu(reference):
    rows, counts = load_mmlu(reference / "assignment5-alignment/data/mmlu/test/anatomy_test.csv")
    assert len(rows) == 135 and rows[0]["subject"] == "anatomy" and rows[0]["answer"] == "A"
    assert rows[0]["options"][0] == "paralysis of the facial muscles."
    rows, _ = load_mmlu(reference / "assignment5-alignment/data/mmlu/dev")
    assert len({r["subject"] for r in rows}) == 57 and len(rows) == 57 * 5


def test_load_alpaca_and_sft(reference):
    rows, _ = load_alpaca_eval(reference / "assignment5-alignment/data/alpaca_eval/alpaca_eval.jsonl", limit=3)
    assert len(rows) == 3 and rows[0]["instruction"].startswith("What are the names")
    rows, _ = load_sft_jsonl(reference / "assignment5-alignment/fixtures/sft_sample.jsonl")
    assert rows[0]["prompt"].startswith("Write a 5-7 page")
