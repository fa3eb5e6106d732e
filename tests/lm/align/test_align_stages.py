"""The stage functions on a pretrain-style manifest (byte tokenizer) and the real CS336 data."""

import pytest
import torch

from lm.align.dpo import DPOConfig
from lm.align.grpo import GRPOConfig
from lm.align.sft import SFTConfig
from lm.align.stages import (
    AlignDataConfig,
    StageOptions,
    build_align_data,
    read_split,
    run_dpo,
    run_grpo,
    run_sft,
)
from lm.data.shards import Stage, read_manifest, read_stage_table
from lm.eval.stage import EvalConfig, run_evaluate
from lm.model import ModelConfig, TransformerLM
from lm.train import save_checkpoint


@pytest.fixture
def pretrained(tmp_path):
    """What the pretrain stage writes: a checkpoint and a manifest naming it, tokenizer "bytes"."""
    torch.manual_seed(0)
    model = TransformerLM(
        ModelConfig(vocab_size=257, context_length=48, d_model=32, num_layers=1, num_heads=2, d_ff=64)
    )
    stage = Stage(tmp_path, "pretrain", version="test", config={})
    save_checkpoint(model, None, 0, stage.path / "checkpoint")
    return str(
        stage.commit(
            extra={
                "checkpoint": str(stage.path / "checkpoint"),
                "tokenizer": "bytes",
                "eot_id": 256,
                "model_config": model.config.model_dump(),
            }
        )
    )


OPTS = StageOptions(verifier=None, max_new_tokens=6, num_samples=2, num_threads=1)


def test_sft_on_real_sample_with_alpaca_template(reference, tmp_path, pretrained):
    a5 = reference / "assignment5-alignment"
    data = build_align_data(
        tmp_path,
        AlignDataConfig(
            source="sft_jsonl",
            train_path=str(a5 / "fixtures/sft_sample.jsonl"),
            template="alpaca_sft",
            prompts_dir=str(a5 / "prompts"),
        ),
        "instruction",
    )
    train, evals = read_split(data, "train"), read_split(data, "eval")
    assert (len(train), len(evals)) == (4, 1)  # 5 rows: a fifth held out
    assert evals[0]["prompt"].startswith("Below is an instruction") and evals[0]["prompt"].endswith("### Response:\n")
    threads = torch.get_num_threads()
    out = run_sft(tmp_path, pretrained, data, SFTConfig(num_steps=4, batch_size=2, eval_every=2), OPTS)
    assert torch.get_num_threads() == threads  # the stage ran single-threaded, then restored the count
    m = read_manifest(out)
    assert m["counts"]["truncated_responses"] > 0  # the documents are far longer than 48 bytes
    assert 0 < m["metrics"]["nll_after"] < 10 and m["counts"]["truncated_prompts"] > 0
    assert m["tokenizer"] == "bytes" and len(read_stage_table(m)) == 1
    assert run_sft(tmp_path, pretrained, data, SFTConfig(num_steps=4, batch_size=2, eval_every=2), OPTS) == out


def test_grpo_dpo_and_evaluate_on_gsm8k_and_mmlu(reference, tmp_path, pretrained):
    a5 = reference / "assignment5-alignment"
    gsm = AlignDataConfig(
        source="gsm8k",
        train_path=str(a5 / "data/gsm8k/train.jsonl"),
        eval_path=str(a5 / "data/gsm8k/test.jsonl"),
        num_train=8,
        num_eval=2,
        template="r1_zero",
        prompts_dir=str(a5 / "prompts"),
    )
    problems = build_align_data(tmp_path, gsm, "problem")
    assert read_split(problems, "eval")[0]["answer"] == "18"
    g = read_manifest(
        run_grpo(
            tmp_path,
            pretrained,
            problems,
            GRPOConfig(num_steps=1, num_prompts_per_step=2, group_size=2, max_new_tokens=4, eval_every=1),
            OPTS.model_copy(update={"verifier": "r1_zero"}),
        )
    )
    assert g["counts"]["truncated_prompts"] == 4 and g["counts"]["rollouts"] == 4
    prefs = build_align_data(tmp_path, gsm.model_copy(update={"template": "question_answer"}), "preference")
    row = read_split(prefs, "train")[0]
    assert row["chosen"] != row["rejected"] and row["chosen"].split("####")[0] == row["rejected"].split("####")[0]
    d = read_manifest(run_dpo(tmp_path, pretrained, prefs, DPOConfig(num_steps=1, batch_size=2, eval_every=1), OPTS))
    assert d["counts"]["skipped_identical"] == 0
    with pytest.raises(ValueError, match="sft_jsonl"):
        build_align_data(tmp_path, AlignDataConfig(source="sft_jsonl", train_path="x"), "preference")
    ev = read_manifest(
        run_evaluate(
            tmp_path,
            g["_path"],
            EvalConfig(
                tasks=["gsm8k", "mmlu"],
                gsm8k_path=str(a5 / "data/gsm8k/test.jsonl"),
                mmlu_path=str(a5 / "data/mmlu/dev"),
                limit=3,
                max_new_tokens=4,
                template="question_answer",
                perplexity_path=str(a5 / "fixtures/sft_sample.jsonl"),
            ),
        )
    )
    rows = read_stage_table(ev).to_pylist()
    assert [r["task"] for r in rows] == ["gsm8k"] * 3 + ["mmlu"] * 3
    assert rows[0]["answer"] == "18" and rows[3]["prompt"].startswith(
        "Question: Answer the following multiple choice question about abstract algebra."
    )
    assert rows[3]["prompt"].endswith("D. 3\nAnswer:")
    assert 200 < ev["metrics"]["perplexity"]["perplexity"] < 400  # an untrained byte model: about uniform over 257
    with pytest.raises(ValueError, match="gsm8k_path"):
        run_evaluate(tmp_path, g["_path"], EvalConfig(tasks=["gsm8k"]))


def test_our_bpe_tokenizer_through_load_tokenizer(reference, tmp_path):
    from lm.align.batches import tokenize_prompt_and_output
    from lm.tokenizer import Tokenizer, train_bpe
    from lm.tokenizer.load import load_tokenizer

    vocab, merges = train_bpe(
        str(reference / "assignment1-basics/fixtures/tinystories_sample.txt"), 300, ["<|endoftext|>"]
    )
    Tokenizer(vocab, merges, ["<|endoftext|>"]).save(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.eot_id is not None and tok.decode(tok.encode("Once upon a time")) == "Once upon a time"
    b = tokenize_prompt_and_output(["Once upon"], [" a time"], tok, eot_id=tok.eot_id)
    n = len(tok.encode(" a time")) + 1
    assert b.response_mask.sum().item() == n and b.labels[0, -1].item() == tok.eot_id
