"""TransformerLM and its blocks: CS336 snapshots (seeded inputs), config errors, attention kinds."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lm.model import ModelConfig, TransformerLM
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
        for k in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.output_proj", "ln1", "ln2", "ffn.w1", "ffn.w2", "ffn.w3"):
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
    ref = TransformerLM(_cfg(attention="reference"))
    other = TransformerLM(_cfg(attention=kind))
    other.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 97, (2, 32))
    torch.testing.assert_close(other(ids), ref(ids), rtol=1e-4, atol=1e-4)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    m = TransformerLM(_cfg(attention="reference"))
    ids = torch.randint(0, 97, (1, 16))
    ids2 = ids.clone()
    ids2[0, 10:] = (ids2[0, 10:] + 1) % 97
    torch.testing.assert_close(m(ids)[:, :10], m(ids2)[:, :10])


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="context_length"):
        TransformerLM(_cfg())(torch.zeros(1, 33, dtype=torch.long))
