"""Losses and normalizations: hand-computed values and the CS336 assignment-5 snapshots."""

import math

import pytest
import torch

from lm.align.losses import (
    compute_group_normalized_rewards,
    compute_grpo_clip_loss,
    compute_naive_policy_gradient_loss,
    compute_policy_gradient_loss,
    dpo_loss,
    grpo_microbatch_train_step,
    sft_microbatch_train_step,
)
from lm.align.ops import compute_entropy, masked_mean, masked_normalize


@pytest.fixture
def x(snapshot_inputs):
    return snapshot_inputs


# --------------------------------------------------------------------------- hand-computed


def test_masked_mean_and_normalize_by_hand():
    t = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    assert masked_mean(t, m).item() == pytest.approx((1 + 3 + 6) / 3)
    assert masked_mean(t, m, dim=1).tolist() == pytest.approx([2.0, 6.0])
    assert masked_mean(t, m, dim=0).tolist()[0] == 1.0 and math.isnan(masked_mean(t, m, dim=0)[1].item())
    assert masked_normalize(t, m, dim=1, normalize_constant=2.0).tolist() == pytest.approx([2.0, 3.0])
    assert masked_normalize(t, m).item() == 10.0
    with pytest.raises(ValueError, match="normalize_constant"):
        masked_normalize(t, m, normalize_constant=0)


def test_entropy_by_hand():
    # uniform over 4 -> ln 4; one-hot (huge logit) -> 0, no NaN from exp overflow
    e = compute_entropy(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0]]))
    assert e.tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)


def test_group_rewards_by_hand():
    rewards = {"a": 1.0, "b": 0.0, "c": 0.5}
    fn = lambda r, t: {"reward": rewards[r]}
    adv, raw, meta = compute_group_normalized_rewards(fn, ["a", "b", "c", "c"], ["x"] * 4, 2, 1e-6, False)
    assert raw.tolist() == [1.0, 0.0, 0.5, 0.5]
    assert adv.tolist() == [0.5, -0.5, 0.0, 0.0]  # second group all equal: zero advantage
    assert meta["zero_signal_groups"] == 1
    adv, _, _ = compute_group_normalized_rewards(fn, ["a", "b"], ["x"] * 2, 2, 0.0, True)
    # std (unbiased) of [1, 0] = sqrt(0.5); (1 - 0.5) / sqrt(0.5) = sqrt(0.5)
    assert adv.tolist() == pytest.approx([math.sqrt(0.5), -math.sqrt(0.5)])


def test_group_rewards_all_equal_and_eps_zero_no_nan():
    fn = lambda r, t: {"reward": 1.0}
    adv, _, meta = compute_group_normalized_rewards(
        fn, ["a"] * 6, ["x"] * 6, 3, advantage_eps=0.0, normalize_by_std=True
    )
    assert adv.tolist() == [0.0] * 6
    assert meta["zero_signal_groups"] == 2
    # group of one: std undefined -> advantage 0
    adv, _, _ = compute_group_normalized_rewards(fn, ["a", "b"], ["x"] * 2, 1, 0.0, True)
    assert adv.tolist() == [0.0, 0.0]


def test_group_rewards_empty_and_bad_sizes(hash_reward):
    adv, raw, meta = compute_group_normalized_rewards(hash_reward, [], [], 4)
    assert adv.numel() == 0 and raw.numel() == 0 and meta["num_groups"] == 0
    with pytest.raises(ValueError, match="multiple of group_size"):
        compute_group_normalized_rewards(hash_reward, ["a"] * 3, ["x"] * 3, 2)
    with pytest.raises(ValueError, match="ground truths"):
        compute_group_normalized_rewards(hash_reward, ["a"] * 2, ["x"], 2)


def test_group_rewards_verifier_raising_counts_zero():
    def flaky(r, t):
        if r == "boom":
            raise ValueError("malformed")
        return {"reward": 1.0}

    adv, raw, meta = compute_group_normalized_rewards(flaky, ["ok", "boom", "ok", "ok"], ["1"] * 4, 2, 1e-6, False)
    assert raw.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert adv.tolist() == [0.5, -0.5, 0.0, 0.0]
    assert meta["reward_errors"] == 1 and meta["reward_error:ValueError"] == 1


def test_grpo_clip_by_hand():
    # ratio e^{0.5} ≈ 1.6487 clipped to 1.2 with A=+1 -> loss -1.2; with A=-1 min picks -ratio -> +1.6487
    lp, old = torch.tensor([[0.5]]), torch.tensor([[0.0]])
    loss, meta = compute_grpo_clip_loss(torch.tensor([[1.0]]), lp, old, 0.2)
    assert loss.item() == pytest.approx(-1.2) and meta["clipped"].item()
    loss, meta = compute_grpo_clip_loss(torch.tensor([[-1.0]]), lp, old, 0.2)
    assert loss.item() == pytest.approx(math.exp(0.5)) and not meta["clipped"].item()


def test_policy_gradient_loss_requires_its_inputs():
    lp = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="raw_rewards"):
        compute_policy_gradient_loss(lp, "no_baseline")
    with pytest.raises(ValueError, match="old_log_probs"):
        compute_policy_gradient_loss(lp, "grpo_clip", advantages=torch.ones(1, 1))
    with pytest.raises(ValueError, match="unknown loss_type"):
        compute_policy_gradient_loss(lp, "ppo", raw_rewards=torch.ones(1, 1))


def test_grpo_step_empty_response_is_zero_not_nan():
    lp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    loss, _ = grpo_microbatch_train_step(lp, mask, 1, "no_baseline", raw_rewards=torch.tensor([[1.0], [1.0]]))
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert lp.grad.tolist() == [[-0.25, -0.25, 0.0], [0.0, 0.0, 0.0]]


def test_sft_step_by_hand():
    lp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1]], dtype=torch.bool)
    loss, meta = sft_microbatch_train_step(lp, mask, gradient_accumulation_steps=2, normalize_constant=5.0)
    assert loss.item() == pytest.approx(5.0 / 5.0 / 2)
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, -0.1, -0.1]]))
    assert meta["response_tokens"].item() == 2


def test_dpo_loss_by_hand():
    # margin = 0.5 * ((-1 - -2) - (-3 - -2)) = 1.0 -> loss = log(1 + e^-1)
    loss, meta = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    assert meta["margin"].item() == pytest.approx(1.0) and meta["accuracy"].item() == 1.0
    # policy == reference -> loss log 2
    loss, _ = dpo_loss(*(torch.tensor([-4.0]),) * 4, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    # a huge margin stays finite
    loss, _ = dpo_loss(torch.tensor([-1e6]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)
    assert loss.item() == pytest.approx(1e6)


# --------------------------------------------------------------------------- CS336 snapshots


def test_snapshot_entropy(snapshots, x):
    snapshots.check(compute_entropy(x["logits"]), snapshots.load("test_compute_entropy")["array"], atol=1e-5)


@pytest.mark.parametrize("dim,name", [(0, "dim0"), (1, "dim1"), (None, "dimNone"), (-1, "dimlast")])
def test_snapshot_masked_mean_and_normalize(snapshots, x, dim, name):
    snapshots.check(masked_mean(x["logits"], x["mask"], dim), snapshots.load(f"test_masked_mean_{name}")["array"])
    snapshots.check(
        masked_normalize(x["logits"], x["mask"], dim, normalize_constant=42.0),
        snapshots.load(f"test_masked_normalize_{name}")["array"],
    )


@pytest.mark.parametrize("by_std", [True, False])
def test_snapshot_group_normalized_rewards(snapshots, hash_reward, by_std):
    responses = [f"hmm I think ths answer is {i}" for i in range(8)]
    adv, raw, _ = compute_group_normalized_rewards(hash_reward, responses, ["42"] * 8, 4, 1e-6, by_std)
    snap = snapshots.load(f"test_compute_group_normalized_rewards_{'' if by_std else 'no_'}normalize_by_std")
    snapshots.check(adv, snap["normalized_rewards"])
    snapshots.check(raw, snap["raw_rewards"])


def test_snapshot_policy_gradient_losses(snapshots, x):
    pl, rr, adv, old = x["policy_log_probs"], x["raw_rewards"], x["advantages"], x["old_log_probs"]
    snapshots.check(
        compute_naive_policy_gradient_loss(rr, pl), snapshots.load("test_compute_naive_policy_gradient_loss")["array"]
    )
    for loss_type in ("no_baseline", "reinforce_with_baseline"):
        got, _ = compute_policy_gradient_loss(pl, loss_type, rr, adv, old, 0.5)
        snapshots.check(got, snapshots.load(f"test_compute_policy_gradient_loss_{loss_type}")["array"])
    got, _ = compute_policy_gradient_loss(pl, "grpo_clip", rr, adv, old, 0.5)
    snapshots.check(got, snapshots.load("test_compute_policy_gradient_loss_grpo_clip")["array"])
    # the clip-range pair: 0.1 clips, 10.0 never does (the snapshot is the same for any range >= 1)
    snapshots.check(
        compute_grpo_clip_loss(adv, pl, old, 0.1)[0],
        snapshots.load("test_compute_grpo_clip_loss_small_cliprange")["array"],
    )
    snapshots.check(
        compute_grpo_clip_loss(adv, pl, old, 10.0)[0],
        snapshots.load("test_compute_grpo_clip_loss_large_cliprange")["array"],
    )


@pytest.mark.parametrize(
    "constant,name", [(1.0, "test_sft_microbatch_train_step"), (42.0, "test_sft_microbatch_train_step_normalize")]
)
def test_snapshot_sft_microbatch_step(snapshots, x, constant, name):
    lp = x["policy_log_probs"].clone().requires_grad_()
    loss, _ = sft_microbatch_train_step(
        lp, x["response_mask"], gradient_accumulation_steps=2, normalize_constant=constant
    )
    snap = snapshots.load(name)
    snapshots.check(loss, snap["loss"])
    snapshots.check(lp.grad, snap["policy_log_probs_grad"])


def test_snapshot_microbatch_steps_accumulate_over_10_steps(snapshots, x):
    lp = x["policy_log_probs"].clone().requires_grad_()
    for _ in range(10):
        loss, _ = sft_microbatch_train_step(lp, x["response_mask"], 2, 1.0)
    snap = snapshots.load("test_sft_microbatch_train_step_10_steps")
    snapshots.check(loss, snap["loss"][-1])
    snapshots.check(lp.grad, snap["policy_log_probs_grad"][-1])
    lp = x["policy_log_probs"].clone().requires_grad_()
    for _ in range(10):
        loss, _ = grpo_microbatch_train_step(
            lp, x["response_mask"], 2, "grpo_clip", x["raw_rewards"], x["advantages"], x["old_log_probs"], 0.1
        )
    snap = snapshots.load("test_grpo_microbatch_train_step_grpo_clip_10_steps")
    snapshots.check(loss, snap["loss"][-1])
    snapshots.check(lp.grad, snap["policy_log_probs_grad"][-1], atol=1e-6)


def test_snapshot_grpo_microbatch_step(snapshots, x):
    lp = x["policy_log_probs"].clone().requires_grad_()
    loss, meta = grpo_microbatch_train_step(
        lp, x["response_mask"], 2, "grpo_clip", x["raw_rewards"], x["advantages"], x["old_log_probs"], 0.1
    )
    snap = snapshots.load("test_grpo_microbatch_train_step_grpo_clip")
    snapshots.check(loss, snap["loss"])
    snapshots.check(lp.grad, snap["policy_log_probs_grad"])
    assert 0.0 < meta["clip_fraction"].item() < 1.0
