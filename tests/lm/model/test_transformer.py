"""TransformerLM and its blocks: CS336 snapshots (seeded inputs), config errors, attention kinds, an old
checkpoint, torch.compile without graph breaks, activation checkpointing, bf16 autocast."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lm.model import ModelConfig, TransformerLM, load_model
from lm.model.transformer import RotaryEmbedding, scaled_dot_product_attention, softmax

SNAP = "assignment1-basics/_snapshots"


def _seeded(seed, *shape):
    torch.manual_seed(seed)
    return torch.randn(*shape)


@pytest.fixture
def qkvm():
    # The CS336 test fixtures: batch 4, 12 queries, 16 keys, d_model 64, seeds 1,2,3,5.
    q, k, v = _seeded(1, 4, 12, 64), _seeded(2, 4, 16, 64), _seeded(3, 4, 16, 64)
    mask = _seeded(5, 4, 12, 16) > 0.5
    return q, k, v, mask


def test_sdpa_matches_cs336_snapshot(reference, qkvm):
    q, k, v, mask = qkvm
    expected = np.load(reference / SNAP / "test_scaled_dot_product_attention.npz")["array"]
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, mask).numpy(), expected, atol=1e-6)


def test_4d_sdpa_matches_cs336_snapshot(reference, qkvm):
    q, k, v, mask = (x.reshape(2, 2, *x.shape[1:]) for x in qkvm)  # (batch head) -> batch, head
    expected = np.load(reference / SNAP / "test_4d_scaled_dot_product_attention.npz")["array"]
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, mask).numpy(), expected, atol=1e-6)


def test_rope_matches_cs336_snapshot(reference):
    x = _seeded(4, 4, 12, 64)
    rope = RotaryEmbedding(10000.0, 64, 12)
    expected = np.load(reference / SNAP / "test_rope.npz")["array"]
    np.testing.assert_allclose(rope(x, torch.arange(12)).numpy(), expected, atol=1e-6)


def test_softmax_is_stable_for_huge_logits():
    x = torch.tensor([[1000.0, 1001.0, 999.0]])
    out = softmax(x)
    torch.testing.assert_close(out, torch.softmax(x, -1))
    assert torch.isfinite(out).all()


def _cfg(**kw):
    base = dict(vocab_size=97, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64)
    return ModelConfig(**{**base, **kw})


def test_state_dict_keys_follow_design():
    keys = set(TransformerLM(_cfg()).state_dict())
    for n in range(2):
        for k in (
            "attn.q_proj",
            "attn.k_proj",
            "attn.v_proj",
            "attn.output_proj",
            "ln1",
            "ln2",
            "ffn.w1",
            "ffn.w2",
            "ffn.w3",
        ):
            assert f"layers.{n}.{k}.weight" in keys
    assert {"token_embeddings.weight", "ln_final.weight", "lm_head.weight"} <= keys
    assert len(keys) == 2 * 9 + 3


def test_weight_tying_shares_one_tensor():
    m = TransformerLM(_cfg(tie_embeddings=True))
    assert m.lm_head.weight is m.token_embeddings.weight
    assert m.num_params(non_embedding=False) == TransformerLM(_cfg()).num_params(non_embedding=False) - 97 * 32


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(d_model=30, num_heads=4), "num_heads"),
        (dict(attention="magic"), "attention"),
        (dict(context_length=64, rope_max_seq_len=32), "rope_max_seq_len"),
        (dict(num_layers=0), "num_layers"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValidationError) as e:
        _cfg(**kw)
    assert field in str(e.value)


@pytest.mark.parametrize("kind", ["sdpa", "flash_torch", "auto"])
def test_attention_kinds_agree_with_reference(kind):
    torch.manual_seed(0)
    ref = TransformerLM(_cfg(attention="math"))
    other = TransformerLM(_cfg(attention=kind))
    other.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 97, (2, 32))
    torch.testing.assert_close(other(ids), ref(ids), rtol=1e-4, atol=1e-4)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    m = TransformerLM(_cfg(attention="math"))
    ids = torch.randint(0, 97, (1, 16))
    ids2 = ids.clone()
    ids2[0, 10:] = (ids2[0, 10:] + 1) % 97
    torch.testing.assert_close(m(ids)[:, :10], m(ids2)[:, :10])


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="context_length"):
        TransformerLM(_cfg())(torch.zeros(1, 33, dtype=torch.long))


FIXTURE = Path(__file__).parent / "fixtures" / "complex_rope_checkpoint"


def test_checkpoint_of_the_complex_rope_code_loads_and_gives_its_logits():
    # Written by main@3480041, whose RoPE multiplied complex numbers (see the fixture's README):
    # same state-dict keys, and the real-valued rotation reproduces its logits.
    model = load_model(FIXTURE)
    assert model.config.attention == "math"  # saved as 'reference', the old name
    ids = torch.from_numpy(np.load(FIXTURE / "ids.npy"))
    with torch.no_grad():
        logits = model(ids)
    np.testing.assert_allclose(logits.numpy(), np.load(FIXTURE / "logits.npy"), rtol=0, atol=1e-5)


def _tiny(**kw):
    torch.manual_seed(0)
    return TransformerLM(_cfg(d_model=64, num_heads=4, **kw))  # head size 16: every attention kind runs


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_dynamo_finds_no_graph_break_and_compiled_grads_equal_eager(kernels, one_thread):
    if kernels == "triton":
        pytest.importorskip("triton")  # our kernels are custom ops: opaque nodes in the graph
    model = _tiny(**(dict(attention="triton", norm="triton") if kernels == "triton" else {}))
    ids = torch.randint(0, 97, (2, 32))
    explained = torch._dynamo.explain(model)(ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    # forward + backward through dynamo and AOTAutograd (aot_eager: the traced graphs, run without codegen)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(ids).logsumexp(-1).mean().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(ids).logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)


def _logits_and_grads(model, ids):
    model.zero_grad()
    logits = model(ids)
    logits.logsumexp(-1).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["sdpa", "triton", "flash_torch"])
def test_attention_implementations_agree_forward_and_backward(kind, one_thread):
    if kind == "triton":
        pytest.importorskip("triton")  # on CPU under TRITON_INTERPRET=1 (tests/conftest.py)
    ref, other = _tiny(attention="math"), _tiny(attention=kind, norm="triton" if kind == "triton" else "torch")
    ids = torch.randint(0, 97, (2, 32))
    want, want_grads = _logits_and_grads(ref, ids)
    got, got_grads = _logits_and_grads(other, ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-3, atol=1e-5, msg=n)


def test_activation_checkpointing_gives_the_same_gradients(one_thread):
    model = _tiny()
    ids = torch.randint(0, 97, (2, 32))
    want, want_grads = _logits_and_grads(model, ids)
    model.checkpoint_blocks = True
    got, got_grads = _logits_and_grads(model, ids)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for n in want_grads:
        torch.testing.assert_close(got_grads[n], want_grads[n], rtol=1e-6, atol=1e-7, msg=n)


def test_bf16_autocast_keeps_fp32_weights():
    model = _tiny(attention="math")
    ids = torch.randint(0, 97, (2, 32))
    want = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(ids)
    assert got.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.1)  # bf16 matmuls: ~3 significant digits


@pytest.mark.gpu
def test_compiled_model_with_our_kernels_trains_on_gpu_in_bf16():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    cfg = _cfg(d_model=256, num_heads=4, context_length=256, attention="triton", norm="triton")  # head size 64
    eager = TransformerLM(cfg).cuda()
    compiled = TransformerLM(cfg).cuda()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(fullgraph=True)  # inductor; our kernels stay custom ops
    ids = torch.randint(0, 97, (4, 256), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want, got = eager(ids), compiled(ids)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    got.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in compiled.parameters())
