"""Generation evaluations (rows with prompt, generation, parsed answer, correctness) and perplexity."""

import math

import pytest
import torch

from lm.eval.datasets import load_gsm8k, load_mmlu
from lm.eval.harness import EVAL_SCHEMA, evaluate_generation, perplexity
from lm.eval.parse import parse_gsm8k_response, parse_mmlu_response
from lm.model import ModelConfig, TransformerLM
from lm.tokenizer.load import CharTokenizer

ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n’—–“”é°×÷½…€£"


def model_for(tok, ctx=64, seed=0):
    torch.manual_seed(seed)
    return TransformerLM(
        ModelConfig(vocab_size=tok.vocab_size, context_length=ctx, d_model=32, num_layers=1, num_heads=2, d_ff=64)
    )


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_gsm8k_and_mmlu_rows(reference):
    tok = CharTokenizer(ALPHABET)
    model = model_for(tok, ctx=512)
    rows, _ = load_gsm8k(reference / "assignment5-alignment/data/gsm8k/test.jsonl", limit=3)
    rows = [r for r in rows if all(c in ALPHABET for c in r["question"])]
    out, counts = evaluate_generation(model, tok, "gsm8k", rows, template="Q: {question}\nA:", max_new_tokens=8)
    assert len(out) == len(rows) > 0 and set(out[0]) == set(EVAL_SCHEMA.names)
    for r, o in zip(rows, out):
        assert o["prompt"] == f"Q: {r['question']}\nA:" and o["answer"] == r["answer"]
        assert o["parsed"] == parse_gsm8k_response(o["generation"])
        assert o["correct"] == (o["parsed"] is not None and float(o["parsed"]) == float(r["answer"]))
    assert counts["correct"] == sum(o["correct"] for o in out)
    mm, _ = load_mmlu(reference / "assignment5-alignment/data/mmlu/dev/anatomy_dev.csv", limit=2)
    out, counts = evaluate_generation(model, tok, "mmlu", mm, max_new_tokens=4)
    assert all("A. " in o["prompt"] and o["parsed"] == parse_mmlu_response(m, o["generation"]) for m, o in zip(mm, out))
    with pytest.raises(ValueError, match="unknown eval task"):
        evaluate_generation(model, tok, "bleu", mm)


def test_arithmetic_rows_and_bad_record_counted():
    tok = CharTokenizer("0123456789+=")
    model = model_for(tok)
    rows = [{"id": "a", "question": "1+1=", "answer": "2"}, {"id": "b", "question": "2+2=", "answer": "four"}]
    out, counts = evaluate_generation(model, tok, "arithmetic", rows, max_new_tokens=3)
    assert [o["correct"] for o in out][1] is False
    assert counts["grader_error:ValueError"] == 1


def test_perplexity_of_uniform_model_is_vocab_size():
    tok = CharTokenizer("0123456789+=")
    model = model_for(tok, ctx=8)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # logits all zero: uniform over 13 tokens
    p = perplexity(model, tok, ["12+34=46", "1+2=3" * 4, "bad text"])
    assert p["perplexity"] == pytest.approx(13.0, rel=1e-5)
    assert p["tokens"] == 8 + 20 and p["unencodable"] == 1
    assert p["windows"] == 1 + 3  # 20 tokens in windows of 8
    assert math.isnan(perplexity(model, tok, [])["perplexity"])
