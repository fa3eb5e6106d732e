"""Our DDP, ZeRO-1 and FSDP2 match single-process training (CPU, gloo, 2 processes).

Each test spawns 2 ranks once and runs all its cases inside that process group (spawning
costs seconds); a failing case names itself in the assertion message. The reference run is
plain single-process training on the full batch; the parallel run gives each rank its half of
the batch (or, for ZeRO-1 alone, the full batch).
"""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from lm.train.dist_checkpoint import consolidated_state_dicts, load_consolidated_state_dicts
from lm.train.distributed import (
    DDPBucketed,
    DDPIndividualParameters,
    DDPNaive,
    ShardedOptimizer,
    apply_fsdp,
    build_optimizer,
    optimizer_state_bytes,
    run_local,
    wrap_model,
)

FIXTURES = "assignment2-systems/fixtures"


class MLP(nn.Module):
    """10 → 10 → 50 → 5 with a LayerNorm; `layers` so FSDP shards per block."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(10, 10, bias=False), nn.LayerNorm(10)),
                nn.Sequential(nn.Linear(10, 50, bias=False), nn.ReLU()),
            ]
        )
        self.out = nn.Linear(50, 5, bias=False)

    def forward(self, x):  # (B, 10) -> (B, 5)
        for layer in self.layers:
            x = layer(x)
        return self.out(x)


class TiedMLP(nn.Module):
    """The first and last 10×10 projections share one weight (like embedding = lm_head)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 10, bias=False)
        self.fc2 = nn.Linear(10, 10, bias=False)
        self.fc3 = nn.Linear(10, 10, bias=False)
        self.fc3.weight = self.fc1.weight
        self.head = nn.Linear(10, 5)

    def forward(self, x):
        return self.head(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x))))))


def _load(reference_dir):
    data = torch.load(Path(reference_dir) / FIXTURES / "ddp_test_data.pt", weights_only=True)  # (20, 10)
    labels = torch.load(Path(reference_dir) / FIXTURES / "ddp_test_labels.pt", weights_only=True)  # (20, 5)
    return data, labels


def _my_slice(env, data, labels):
    n = data.shape[0] // env.world_size
    return data[env.rank * n : (env.rank + 1) * n], labels[env.rank * n : (env.rank + 1) * n]


def _train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    if hasattr(model, "finish_gradient_synchronization"):
        model.finish_gradient_synchronization()
    opt.step()
    return loss.detach()


def _assert_same_params(a: nn.Module, b: nn.Module, case: str, **tol):
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa, pb, **tol), f"{case}: parameter {name} differs: max |Δ| {(pa - pb).abs().max():.3g}"


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(env, reference_dir):
    data, labels = _load(reference_dir)
    x, y = _my_slice(env, data, labels)
    wrappers = [
        ("naive", DDPNaive),
        ("individual", DDPIndividualParameters),
        *[(f"bucketed {mb} MB", lambda m, mb=mb: DDPBucketed(m, bucket_size_mb=mb)) for mb in (0.0001, 0.0016, 0.01)],
    ]
    for model_cls in (MLP, TiedMLP):
        for name, wrap in wrappers:
            case = f"{model_cls.__name__} {name}"
            torch.manual_seed(env.rank)  # ranks start different: the wrapper must broadcast
            ddp = wrap(model_cls())
            reference = copy.deepcopy(ddp.module)
            start = copy.deepcopy(reference)
            ddp_opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
            for _ in range(5):
                _train_step(ddp, ddp_opt, x, y)
                _train_step(reference, ref_opt, data, labels)
            _assert_same_params(ddp.module, reference, case)
            moved = max((p - q).abs().max().item() for p, q in zip(reference.parameters(), start.parameters()))
            assert moved > 1e-3, f"{case}: training did not move the parameters"
    # Gradient accumulation: two micro-batches, only the second backward communicates.
    for name, wrap in wrappers[1:]:
        torch.manual_seed(0)
        ddp = wrap(MLP())
        reference = copy.deepcopy(ddp.module)
        for micro, last in ((slice(0, 5), False), (slice(5, 10), True)):
            ddp.require_sync = last
            (nn.functional.mse_loss(ddp(x[micro]), y[micro]) / 2).backward()
        ddp.finish_gradient_synchronization()
        halves = [(slice(0, 5), slice(10, 15)), (slice(5, 10), slice(15, 20))]
        for first, second in halves:  # the same 20 rows, as the two ranks' micro-batches
            rows = torch.cat([data[first], data[second]]), torch.cat([labels[first], labels[second]])
            (nn.functional.mse_loss(reference(rows[0]), rows[1]) / 2).backward()
        for (pname, p), q in zip(ddp.module.named_parameters(), reference.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-7), f"accumulation {name}: grad of {pname} differs"

    # 0.0001 MB = 104 bytes: each weight matrix (≥ 400 bytes) gets a bucket of its own, the
    # LayerNorm's weight and bias (40 bytes each) share one; 0.01 MB holds the whole MLP
    # (3,480 bytes). Reverse order puts the output layer first.
    small, large = DDPBucketed(MLP(), 0.0001), DDPBucketed(MLP(), 0.01)
    assert [[tuple(p.shape) for p in b.params] for b in small.buckets] == [
        [(5, 50)],
        [(50, 10)],
        [(10,), (10,)],
        [(10, 10)],
    ]
    assert len(large.buckets) == 1
    assert large.buckets[0].params[0] is large.module.out.weight
    assert len(DDPBucketed(TiedMLP(), 0.01).params) == 4  # fc1 = fc3, fc2, head weight + bias


def test_ddp_matches_single_process(reference):
    run_local(_ddp_worker, 2, str(reference))


# ----------------------------------------------------------------------------- ZeRO-1


def _zero1_worker(env, reference_dir):
    data, labels = _load(reference_dir)
    kwargs = dict(lr=0.1, weight_decay=0.1)

    # ZeRO-1 alone: same data on both ranks, sharded AdamW vs torch's AdamW.
    torch.manual_seed(0)
    model = MLP()
    reference = copy.deepcopy(model)
    opt = ShardedOptimizer(model.parameters(), torch.optim.AdamW, **kwargs)
    ref_opt = torch.optim.AdamW(reference.parameters(), **kwargs)
    for _ in range(10):
        _train_step(model, opt, data, labels)
        _train_step(reference, ref_opt, data, labels)
    _assert_same_params(model, reference, "zero1 AdamW")

    # Each rank holds state for about half the parameters only.
    full = optimizer_state_bytes(ref_opt)
    assert 0 < opt.local_state_bytes() < 0.75 * full

    # Consolidated state equals the unsharded optimizer's; loading it back continues identically.
    sd = opt.state_dict()
    ref_sd = ref_opt.state_dict()
    assert sd["param_groups"] == ref_sd["param_groups"]
    assert sorted(sd["state"]) == sorted(ref_sd["state"])
    for i in ref_sd["state"]:
        for k, v in ref_sd["state"][i].items():
            assert torch.allclose(sd["state"][i][k], v), f"state {i}.{k} differs"
    resumed = copy.deepcopy(reference)
    resumed_opt = ShardedOptimizer(resumed.parameters(), torch.optim.AdamW, **kwargs)
    resumed_opt.load_state_dict(ref_sd)
    for _ in range(2):
        _train_step(resumed, resumed_opt, data, labels)
        _train_step(reference, ref_opt, data, labels)
    _assert_same_params(resumed, reference, "zero1 resumed")

    # A learning-rate schedule writing param_groups reaches the local shard.
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = [p.clone() for p in model.parameters()]
    _train_step(model, opt, data, labels)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    # The zero1 strategy = bucketed DDP on half batches + sharded optimizer.
    torch.manual_seed(env.rank)
    model = wrap_model(MLP(), "zero1", bucket_size_mb=0.0016)
    reference = copy.deepcopy(model.module)
    opt = build_optimizer(model.parameters(), "zero1", torch.optim.AdamW, **kwargs)
    ref_opt = torch.optim.AdamW(reference.parameters(), **kwargs)
    x, y = _my_slice(env, data, labels)
    for _ in range(10):
        _train_step(model, opt, x, y)
        _train_step(reference, ref_opt, data, labels)
    _assert_same_params(model.module, reference, "zero1 strategy", atol=1e-6)


# ----------------------------------------------------------------------------- FSDP2


def _fsdp_worker(env, reference_dir):
    data, labels = _load(reference_dir)
    x, y = _my_slice(env, data, labels)
    torch.manual_seed(0)  # FSDP2 does not broadcast: every rank builds the same init
    model = MLP()
    reference = copy.deepcopy(model)
    bf16 = copy.deepcopy(model)
    apply_fsdp(model, param_dtype="fp32")
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.01)
    for _ in range(5):
        _train_step(model, opt, x, y)
        ref_loss = _train_step(reference, ref_opt, data, labels)

    # Consolidated (unsharded, index-keyed) state equals the single-process run's; it is
    # gathered into rank 0's CPU memory only.
    msd, osd = consolidated_state_dicts(model, opt)
    if env.rank == 0:
        for k, v in reference.state_dict().items():
            assert torch.allclose(msd[k], v, atol=1e-6), f"fsdp: {k} differs"
        for i, s in ref_opt.state_dict()["state"].items():
            assert torch.allclose(osd["state"][i]["exp_avg_sq"], s["exp_avg_sq"], atol=1e-7), f"fsdp: state {i}"
    else:
        assert msd == {} and osd["state"] == {}

    # An unsharded checkpoint (the reference's state) loads into a fresh sharded model,
    # which then continues exactly like the reference.
    torch.manual_seed(1)
    fresh = apply_fsdp(MLP(), param_dtype="fp32")
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.01)
    load_consolidated_state_dicts(
        fresh, fresh_opt, copy.deepcopy(reference.state_dict()), copy.deepcopy(ref_opt.state_dict())
    )
    _train_step(fresh, fresh_opt, x, y)
    _train_step(reference, ref_opt, data, labels)
    msd, _ = consolidated_state_dicts(fresh, fresh_opt)
    if env.rank == 0:
        for k, v in reference.state_dict().items():
            assert torch.allclose(msd[k], v, atol=1e-6), f"fsdp resumed: {k} differs"

    # Mixed precision (bf16 compute): same trajectory, to bf16 accuracy.
    apply_fsdp(bf16, param_dtype="bf16")
    bf16_opt = torch.optim.AdamW(bf16.parameters(), lr=0.01)
    for _ in range(5):
        loss = _train_step(bf16, bf16_opt, x, y)
    assert bf16.layers[0][0].weight.dtype == torch.float32  # sharded master weights stay fp32
    torch.distributed.all_reduce(loss)
    assert abs(loss.item() / env.world_size - ref_loss.item()) < 0.05 * ref_loss.item()


def test_bad_strategy_and_bucket_size_fail_early():
    with pytest.raises(ValueError, match="strategy"):
        wrap_model(MLP(), "ddp2")
    with pytest.raises(ValueError, match="bucket_size_mb"):
        DDPBucketed(MLP(), bucket_size_mb=0)


# ----------------------------------------------------------------------------- TransformerLM


def _lm_worker(env):
    from lm.model import ModelConfig, TransformerLM
    from lm.train import AdamW, cross_entropy

    cfg = ModelConfig(
        vocab_size=64,
        context_length=16,
        d_model=32,
        num_layers=2,
        num_heads=4,
        d_ff=64,
        tie_embeddings=True,
        attention="reference",
        norm="torch",
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (8, 17), generator=g)  # (B, T+1): the same global batch on every rank
    x, y = ids[:, :-1], ids[:, 1:]
    n = x.shape[0] // env.world_size
    mine = slice(env.rank * n, (env.rank + 1) * n)
    for strategy in ("ddp", "ddp_bucketed", "zero1", "fsdp"):
        torch.manual_seed(0)
        model = TransformerLM(cfg)
        assert model.lm_head.weight is model.token_embeddings.weight
        reference = copy.deepcopy(model)
        wrapped = wrap_model(model, strategy, bucket_size_mb=0.01, fsdp_param_dtype="fp32")
        opt = build_optimizer(model.parameters(), strategy, AdamW, lr=1e-2, weight_decay=0.1)
        ref_opt = AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
        for _ in range(5):
            for m, o, xb, yb in ((wrapped, opt, x[mine], y[mine]), (reference, ref_opt, x, y)):
                o.zero_grad(set_to_none=True)
                cross_entropy(m(xb), yb).backward()
                if hasattr(m, "finish_gradient_synchronization"):
                    m.finish_gradient_synchronization()
                o.step()
        msd, _ = consolidated_state_dicts(wrapped, opt)
        if strategy == "fsdp" and env.rank != 0:
            continue  # FSDP gathers the full state on rank 0 only
        for k, v in reference.state_dict().items():
            assert torch.allclose(msd[k], v, atol=1e-5), (
                f"TransformerLM {strategy}: {k} differs by {(msd[k] - v).abs().max():.3g}"
            )


def _sharded_worker(env, reference_dir):
    _zero1_worker(env, reference_dir)
    _fsdp_worker(env, reference_dir)
    _lm_worker(env)


def test_zero1_fsdp_and_tied_transformer_match_single_process(reference):
    """One spawn for the three (starting 2 processes costs seconds): ZeRO-1 AdamW vs AdamW,
    FSDP2 vs single process (and its consolidated checkpoint), and a tied-weight
    TransformerLM under every strategy."""
    run_local(_sharded_worker, 2, str(reference))
