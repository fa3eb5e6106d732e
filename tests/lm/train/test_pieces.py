"""Loss, AdamW, schedule, clipping, batches: exact references where CS336 / torch provide them."""

import numpy as np
import pytest
import torch

from lm.train import AdamW, clip_grad_norm_, cosine_lr, cross_entropy, get_batch


def test_cross_entropy_matches_torch_and_survives_huge_logits():
    torch.manual_seed(0)
    logits = torch.randn(8, 5, 11)
    targets = torch.randint(0, 11, (8, 5))
    torch.testing.assert_close(
        cross_entropy(logits, targets), torch.nn.functional.cross_entropy(logits.view(-1, 11), targets.view(-1))
    )
    big = logits * 1000
    out = cross_entropy(big, targets)
    assert torch.isfinite(out)
    torch.testing.assert_close(out, torch.nn.functional.cross_entropy(big.view(-1, 11), targets.view(-1)))


def _optimize(opt_class, steps=1000):
    # The CS336 test problem: Linear(3, 2) fitting (x0 + x1, -x2), seed 42.
    torch.manual_seed(42)
    model = torch.nn.Linear(3, 2, bias=False)
    opt = opt_class(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.rand(model.in_features)
        loss = ((torch.tensor([x[0] + x[1], -x[2]]) - model(x)) ** 2).sum()
        loss.backward()
        opt.step()
    return model.weight.detach()


def test_adamw_matches_torch_after_1000_steps():
    ours, theirs = _optimize(AdamW), _optimize(torch.optim.AdamW)
    assert (ours - theirs).abs().max().item() <= 1e-6


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_adamw_implementations_equal_the_for_loop_over_100_steps(impl, one_thread):
    from lm.model import ModelConfig, TransformerLM

    def train(impl):
        torch.manual_seed(0)  # a tied-embedding model: one tensor reached by two paths
        model = TransformerLM(
            ModelConfig(
                vocab_size=97, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=64, tie_embeddings=True
            )
        )
        opt = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, impl=impl)
        g = torch.Generator().manual_seed(1)
        for _ in range(100):
            ids = torch.randint(0, 97, (4, 17), generator=g)
            opt.zero_grad()
            cross_entropy(model(ids[:, :-1]), ids[:, 1:]).backward()
            opt.step()
        return model.state_dict(), opt.state_dict()

    (want, want_opt), (got, got_opt) = train("for_loop"), train(impl)
    for name in want:
        assert (got[name] - want[name]).abs().max().item() <= 1e-6, name
    for i, state in want_opt["state"].items():
        assert got_opt["state"][i]["step"].item() == state["step"].item() == 100
        torch.testing.assert_close(got_opt["state"][i]["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_adamw_matches_cs336_snapshot(reference):
    expected = np.load(reference / "assignment1-basics/_snapshots/test_adamw.npz")["array"]
    np.testing.assert_allclose(_optimize(AdamW).numpy(), expected, atol=1e-4)


def test_cosine_schedule_matches_cs336_values():
    expected = [
        0,
        0.14285714285714285,
        0.2857142857142857,
        0.42857142857142855,
        0.5714285714285714,
        0.7142857142857143,
        0.8571428571428571,
        1.0,
        0.9887175604818206,
        0.9554359905560885,
        0.9018241671106134,
        0.8305704108364301,
        0.7452476826029011,
        0.6501344202803414,
        0.55,
        0.44986557971965857,
        0.3547523173970989,
        0.26942958916356996,
        0.19817583288938662,
        0.14456400944391146,
        0.11128243951817937,
        0.1,
        0.1,
        0.1,
        0.1,
    ]
    got = [cosine_lr(it, 1, 0.1, 7, 21) for it in range(25)]
    np.testing.assert_allclose(got, expected)


def test_clip_grad_norm_matches_torch_and_skips_params_without_grad():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 5)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for ps in (a, b):
        (sum((p**2).sum() for p in ps[:2])).backward()  # third param gets no grad
    norm = clip_grad_norm_(a, 1.0)
    ref = torch.nn.utils.clip_grad_norm_(b[:2], 1.0)
    torch.testing.assert_close(norm, ref)
    for p, q in zip(a[:2], b[:2]):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)
    assert a[2].grad is None


def test_get_batch_windows_and_targets():
    data = np.arange(100)
    x, y = get_batch(data, 8, 7, "cpu", np.random.default_rng(0))
    assert x.shape == y.shape == (8, 7) and x.dtype == torch.int64
    torch.testing.assert_close(y, x + 1)
    assert int(x[:, 0].max()) <= 100 - 7 - 1


def test_get_batch_bad_device():
    with pytest.raises(RuntimeError, match="cuda:99"):
        get_batch(np.arange(100), 2, 4, "cuda:99")
    with pytest.raises(ValueError, match="banana"):
        get_batch(np.arange(100), 2, 4, "banana")


def test_cross_entropy_gradient_matches_torch():
    torch.manual_seed(0)
    logits = (torch.randn(4, 6, 13) * 30).requires_grad_()
    targets = torch.randint(0, 13, (4, 6))
    ours = torch.autograd.grad(cross_entropy(logits, targets) * 3.0, logits)[0]
    ref = torch.autograd.grad(torch.nn.functional.cross_entropy(logits.view(-1, 13), targets.view(-1)) * 3.0, logits)[0]
    torch.testing.assert_close(ours, ref)
    assert torch.autograd.gradcheck(
        lambda x: cross_entropy(x, targets[:1, :3]), logits[:1, :3].detach().double().requires_grad_()
    )
