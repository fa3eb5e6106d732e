"""SFT, DPO and GRPO loops and rollouts on a real (tiny) TransformerLM with the demo tokenizer."""

import math

import pytest
import torch

from lm.align.batches import tokenize_prompt_and_output
from lm.align.demo import demo_tokenizer, split_problems
from lm.align.dpo import DPOConfig, per_instance_dpo_loss, train_dpo
from lm.align.grpo import GRPOConfig, evaluate_rewards, train_grpo
from lm.align.ops import compute_entropy, get_response_log_probs
from lm.align.rewards import arithmetic_reward
from lm.align.rollout import generate_rollouts
from lm.align.sft import SFTConfig, response_nll, train_sft
from lm.model import ModelConfig, TransformerLM


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models run fastest single-threaded on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_model(seed=0, ctx=16):
    torch.manual_seed(seed)
    tok = demo_tokenizer()
    return TransformerLM(ModelConfig(vocab_size=tok.vocab_size, context_length=ctx, d_model=32, num_layers=1, num_heads=2, d_ff=64)), tok


class NoCache(torch.nn.Module):
    """The same model seen as a plain (B, T) -> logits module, as a Hugging Face model would be."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)


def test_response_log_probs_match_manual():
    model, tok = tiny_model()
    b = tokenize_prompt_and_output(["12+3="], ["15"], tok, eot_id=tok.eot_id)
    out = get_response_log_probs(model, b.input_ids, b.labels, return_token_entropy=True)
    logits = model(b.input_ids)
    manual = torch.log_softmax(logits, -1)[0, torch.arange(b.labels.shape[1]), b.labels[0]]
    torch.testing.assert_close(out["log_probs"][0], manual)
    torch.testing.assert_close(out["token_entropy"], compute_entropy(logits))
    assert b.response_mask[0].tolist() == [False] * 4 + [True] * 3  # "1", "5", <eot>


def test_generate_cache_equals_no_cache_and_counts():
    model, tok = tiny_model()
    prompts = [tok.encode("12+34="), tok.encode("5+6="), tok.encode("99+1=")]
    a = generate_rollouts(model, prompts, max_new_tokens=6, temperature=0)
    b = generate_rollouts(NoCache(model), prompts, max_new_tokens=6, temperature=0)
    assert a.completions == b.completions and all(len(c) == 6 for c in a.completions)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = generate_rollouts(model, prompts, max_new_tokens=6, temperature=1.0, generator=g1)
    s2 = generate_rollouts(model, prompts, max_new_tokens=6, temperature=1.0, generator=g2)
    assert s1.completions == s2.completions
    # a prompt as long as the context keeps its tail; generation stops at the context
    long = generate_rollouts(model, [tok.encode("1" * 20)], max_new_tokens=5, temperature=0)
    assert long.counts["truncated_prompts"] == 1 and long.counts["hit_context"] == 1
    assert len(long.completions[0]) == 1  # 15 prompt tokens kept + 1 new = context 16
    with pytest.raises(ValueError, match="empty"):
        generate_rollouts(model, [[]], max_new_tokens=2)


def test_generate_stops_at_stop_token():
    model, tok = tiny_model()

    class EotAfterTwo(NoCache):
        """The tiny model, except end-of-text becomes certain once the sequence has 6 tokens."""

        def forward(self, x):
            logits = self.m(x).clone()
            logits[:, 5:, tok.eot_id] = 1e4
            return logits

    r = generate_rollouts(EotAfterTwo(model), [tok.encode("1+1="), tok.encode("12+1=")], max_new_tokens=5, stop_ids=[tok.eot_id], temperature=0)
    assert r.finished == [True, True]
    assert [len(c) for c in r.completions] == [2, 1]  # prompt 4 + 2 new = 6 tokens; prompt 5 + 1


def test_sft_lowers_held_out_nll_and_counts_truncation():
    model, tok = tiny_model()
    train, evals = split_problems(300, 30, 2, 0)
    hist = train_sft(model, tok, train, evals, SFTConfig(num_steps=40, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=20))
    assert hist["nll_after"] < hist["nll_before"] - 0.3, hist["eval_nll"]
    assert len(hist["loss"]) == 40 and hist["counts"] == {}
    # a context too small for prompt + answer: responses are truncated and counted
    small, _ = tiny_model(ctx=6)
    hist = train_sft(small, tok, train[:8], [], SFTConfig(num_steps=2, batch_size=4, gradient_accumulation_steps=2, eval_every=1))
    assert hist["counts"]["truncated_responses"] > 0
    assert math.isfinite(hist["loss"][-1])
    with pytest.raises(ValueError, match="divisible"):
        train_sft(small, tok, train, [], SFTConfig(batch_size=5, gradient_accumulation_steps=2))


def test_dpo_raises_preference_accuracy_and_skips_identical():
    model, tok = tiny_model()
    ref, _ = tiny_model()
    train, evals = split_problems(200, 40, 2, 0)
    # A preference an untrained model can learn and carry to held-out prompts: stop after the
    # answer rather than append a zero. (Right-vs-wrong sums need a model that can add: the demo.)
    trip = lambda ps: [(p, a, a + "0") for p, a in ps]  # noqa: E731
    tr = trip(train) + [("1+1=", "2", "2")]  # one pair with no preference
    # policy == reference: per-instance loss is exactly log 2
    assert per_instance_dpo_loss(model, ref, tok, 0.5, "1+1=", "2", "3").item() == pytest.approx(math.log(2), abs=1e-6)
    hist = train_dpo(model, ref, tok, tr, trip(evals), DPOConfig(num_steps=10, batch_size=16, lr=3e-3, beta=0.5, eval_every=5))
    assert hist["counts"]["skipped_identical"] == 1
    assert hist["eval_accuracy"][0] == 0.0  # margin is exactly 0 before training
    assert hist["eval_accuracy"][-1] == 1.0
    assert hist["likelihood_accuracy_after"] == 1.0 > hist["likelihood_accuracy_before"]
    assert hist["eval_loss"][-1] < 0.1 < math.log(2) == pytest.approx(hist["eval_loss"][0])
    with pytest.raises(ValueError, match="chosen == rejected"):
        train_dpo(model, ref, tok, [("1+1=", "2", "2")], [], DPOConfig(num_steps=1))


def test_grpo_learns_a_simple_reward_and_counts_verifier_errors():
    model, tok = tiny_model(seed=1)
    problems = [(p, a) for p, a in split_problems(64, 8, 2, 0)[0]]

    def starts_with_seven(response, truth):
        if truth == "bad":
            raise ValueError("malformed ground truth")
        return {"reward": float(response.startswith("7")), "format_reward": 1.0}

    before = evaluate_rewards(model, tok, problems[:16], starts_with_seven, max_new_tokens=2, temperature=1.0)["reward_mean"]
    cfg = GRPOConfig(num_steps=12, num_prompts_per_step=8, group_size=8, lr=1e-2, max_new_tokens=2, eval_every=12,
                     loss_type="grpo_clip", epochs_per_rollout=2, microbatch_size=32)
    hist = train_grpo(model, tok, problems + [("1+1=", "bad")], problems[:16], starts_with_seven, cfg)
    assert hist["train_reward"][-1] > 0.5 > before + 0.2, (before, hist["train_reward"])
    assert hist["eval_reward_after"] == 1.0
    assert hist["counts"]["rollouts"] == 12 * 64
    assert hist["counts"]["verifier_errors"] >= 8  # the "bad" problem's group scored 0, counted
    assert all(math.isfinite(x) for x in hist["loss"])
    assert 0.0 <= max(hist["clip_fraction"]) <= 1.0


def test_grpo_all_equal_rewards_do_not_move_the_policy():
    model, tok = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = GRPOConfig(num_steps=2, num_prompts_per_step=2, group_size=4, max_new_tokens=3, loss_type="reinforce_with_baseline", eval_every=5)
    hist = train_grpo(model, tok, [("1+2=", "3"), ("2+2=", "4")], [], lambda r, t: {"reward": 1.0}, cfg)
    assert hist["counts"]["zero_signal_groups"] == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_response_nll_of_exact_answer():
    model, tok = tiny_model()
    nll = response_nll(model, tok, [("1+1=", "2")])
    b = tokenize_prompt_and_output(["1+1="], ["2"], tok, eot_id=tok.eot_id)
    lp = get_response_log_probs(model, b.input_ids, b.labels)["log_probs"]
    assert nll == pytest.approx(-(lp * b.response_mask).sum().item() / 2, rel=1e-6)
    assert arithmetic_reward(" 2", "2")["reward"] == 1.0


def test_sft_stops_when_the_probe_reward_is_reached():
    model, tok = tiny_model()
    train, evals = split_problems(50, 5, 1, 0)
    calls = []

    def probe(m):
        calls.append(1)
        return 0.0 if len(calls) < 3 else 0.5  # before training, step 3, then step 6

    hist = train_sft(model, tok, train, evals, SFTConfig(num_steps=50, batch_size=4, eval_every=3, stop_at_reward=0.4), probe_reward=probe)
    assert hist["stopped_at_step"] == 6 and len(hist["loss"]) == 6 and hist["probe_reward"] == [0.0, 0.0, 0.5]
