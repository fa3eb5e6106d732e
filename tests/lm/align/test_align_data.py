"""Tokenization with a response mask, packing, templates, schemas, verifiers."""

import pytest

from lm.align.batches import iterate_batches, pack_examples, tokenize_prompt_and_output
from lm.align.data import INSTRUCTION_SCHEMA, PREFERENCE_SCHEMA, PROBLEM_SCHEMA, load_template, render
from lm.align.rewards import arithmetic_reward, get_reward_fn, gsm8k_reward, r1_zero_reward, score_responses


class CharTok:
    """Test tokenizer: one id per character (ord), eot 0 — lengths are easy to count by hand."""

    eot_id = 0

    def encode(self, s):
        return [ord(c) for c in s]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_tokenize_prompt_and_output_by_hand():
    b = tokenize_prompt_and_output(["ab", "c"], ["XY", "Z"], CharTok(), pad_id=0)
    # rows: a b X Y   /   c Z 0 0  ->  input = row[:-1], labels = row[1:]
    assert b.input_ids.tolist() == [[97, 98, 88], [99, 90, 0]]
    assert b.labels.tolist() == [[98, 88, 89], [90, 0, 0]]
    assert b.response_mask.tolist() == [[False, True, True], [True, False, False]]
    assert not b.counts


def test_tokenize_truncates_long_responses_and_counts():
    b = tokenize_prompt_and_output(["ab", "abcdefgh"], ["XYZW", "Q"], CharTok(), pad_id=0, max_length=4)
    assert b.input_ids.shape == (2, 3)
    # row 0: a b X Y (response cut to 2); row 1: prompt cut to its last 3 chars + Q
    assert b.input_ids.tolist() == [[97, 98, 88], [102, 103, 104]]
    assert b.labels.tolist()[1] == [103, 104, 81]
    assert b.response_mask.tolist() == [[False, True, True], [False, False, True]]
    assert b.counts == {"truncated_responses": 1, "truncated_prompts": 1}


def test_tokenize_bad_arguments():
    with pytest.raises(ValueError, match="pair up"):
        tokenize_prompt_and_output(["a"], [], CharTok())
    with pytest.raises(ValueError, match="max_length"):
        tokenize_prompt_and_output(["a"], ["b"], CharTok(), max_length=1)


def test_pack_examples_and_batches():
    ex = pack_examples([("ab", "X"), ("c", "YZ")], CharTok(), seq_length=3)
    # stream: a b X <eot> c Y Z <eot>  (8 tokens) -> windows of 4 starting at 0, 3: two examples
    assert [e["input_ids"].tolist() for e in ex] == [[97, 98, 88], [0, 99, 89]]
    assert [e["labels"].tolist() for e in ex] == [[98, 88, 0], [99, 89, 90]]
    assert ex[0]["response_mask"].tolist() == [False, True, True]
    assert ex[1]["response_mask"].tolist() == [False, True, True]
    batches = list(iterate_batches(ex, 1))
    assert len(batches) == 2 and batches[0]["input_ids"].shape == (1, 3)


def test_pack_real_sft_sample(reference):
    from lm.eval.datasets import load_sft_jsonl

    rows, counts = load_sft_jsonl(reference / "assignment5-alignment/fixtures/sft_sample.jsonl")
    assert counts["rows"] == len(rows) > 0
    tok = CharTok()
    ex = pack_examples([(r["prompt"], r["response"]) for r in rows], tok, seq_length=32)
    total = sum(len(r["prompt"]) + len(r["response"]) + 1 for r in rows)
    assert len(ex) == (total - 1) // 32
    assert all(e["input_ids"].shape == (32,) for e in ex)
    # consecutive windows overlap by one token: the last label is the next input's first token
    assert ex[0]["labels"][-1].item() == ex[1]["input_ids"][0].item()


def test_templates(reference):
    t = load_template("r1_zero", reference / "assignment5-alignment/prompts")
    p = render(t, question="What is 2+2?")
    assert p.endswith("User: What is 2+2?\nAssistant: <think>")
    assert render(load_template("plain"), question="1+1=") == "1+1="
    with pytest.raises(ValueError, match="question"):
        render(t, instruction="x")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_template("nope")


def test_schemas():
    assert PREFERENCE_SCHEMA.names == ["id", "prompt", "chosen", "rejected"]
    assert INSTRUCTION_SCHEMA.names == ["id", "prompt", "response"]
    assert PROBLEM_SCHEMA.names == ["id", "prompt", "answer"]


def test_verifiers_by_hand():
    assert gsm8k_reward("so 3 + 4 = 7 and the answer is 1,234", "1234")["reward"] == 1.0
    assert gsm8k_reward("nothing here", "5") == {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
    assert gsm8k_reward("it is 18.0", "He earns 9*2 = <<9*2=18>>18\n#### 18")["reward"] == 1.0
    assert arithmetic_reward("46\n12", "46") == {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}
    assert arithmetic_reward("47", "46")["format_reward"] == 1.0 and arithmetic_reward("47", "46")["reward"] == 0.0
    assert arithmetic_reward("x46", "46")["format_reward"] == 0.0
    good = "let me add</think> <answer>46</answer>"
    assert r1_zero_reward(good, "46")["reward"] == 1.0
    assert r1_zero_reward("46", "46") == {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
    assert r1_zero_reward("x</think> <answer>45</answer>", "46")["format_reward"] == 1.0
    with pytest.raises(ValueError, match="unknown verifier"):
        get_reward_fn("bleu")


def test_verifier_raising_is_counted():
    scores, errors = score_responses(arithmetic_reward, ["46", "46", "7"], ["46", "forty-six", "7"])
    assert [s["reward"] for s in scores] == [1.0, 0.0, 1.0]
    assert errors == {"ValueError": 1}
    with pytest.raises(ValueError, match="is not a number"):
        gsm8k_reward("5", "the answer is 5")
    with pytest.raises(ValueError, match="no number after"):
        gsm8k_reward("5", "#### five")
