import math

import pytest

from lm.model.transformer import ModelConfig, TransformerLM
from lm.scaling.flops import (
    ModelShape,
    family_flops_per_token,
    flops_per_token,
    non_embedding_params,
    num_params,
    shape_for_d_layers,
    shape_for_params,
    tokens_for_budget,
    training_flops,
)


def _model(shape: ModelShape, vocab: int = 257, ctx: int = 64, tie: bool = False) -> TransformerLM:
    return TransformerLM(ModelConfig(vocab_size=vocab, context_length=ctx, tie_embeddings=tie, **shape.to_dict()))


@pytest.mark.parametrize("d_model,num_layers", [(32, 1), (64, 2), (96, 3)])
def test_counts_match_the_model(d_model, num_layers):
    shape = shape_for_d_layers(d_model, num_layers)
    model = _model(shape)
    named = dict(model.named_parameters())
    # N = the attention and FFN matrices of the blocks (norm weights not counted)
    matrices = sum(p.numel() for k, p in named.items() if ".attn." in k or ".ffn." in k)
    assert non_embedding_params(shape) == matrices
    assert num_params(shape, 257) == sum(p.numel() for p in named.values())
    assert num_params(shape, 257, tie_embeddings=True) == sum(
        p.numel() for p in {id(p): p for p in _model(shape, tie=True).parameters()}.values()
    )
    # the trainer's FLOPs count differs from ours only by the RMSNorm weights (6 FLOPs each)
    norms = (2 * num_layers + 1) * d_model
    assert model.flops_per_token() == flops_per_token(shape, 64, 257) + 6 * norms


def test_flops_by_hand():
    shape = ModelShape(d_model=64, num_layers=2, num_heads=2, d_ff=192)
    assert non_embedding_params(shape) == 2 * (4 * 64 * 64 + 3 * 64 * 192) == 106_496
    # 6N + 6·d·V + 12·L·T·d
    assert flops_per_token(shape, 64, 257) == 6 * 106_496 + 6 * 64 * 257 + 12 * 2 * 64 * 64 == 835_968
    assert training_flops(shape, 1000, 64, 257) == 835_968_000


def test_tokens_for_budget_is_the_inverse():
    shape = shape_for_d_layers(128, 2)
    for budget in (1e9, 3.3e12, 1e15):
        d = tokens_for_budget(shape, budget, 128, 257)
        assert training_flops(shape, d, 128, 257) <= budget < training_flops(shape, d + 1, 128, 257)


@pytest.mark.parametrize("target", [1e6, 3e7, 1e8, 1e9, 1e10])
def test_shape_for_params_hits_the_target_in_the_family(target):
    shape = shape_for_params(target, aspect_ratio=64)
    n = non_embedding_params(shape)
    assert abs(n / target - 1) <= 0.05
    assert 32 <= shape.d_model / shape.num_layers <= 128
    assert shape.head_dim == (32 if shape.d_model < 256 else 64)
    assert shape.d_ff % 64 == 0 and 8 * shape.d_model / 3 <= shape.d_ff < 8 * shape.d_model / 3 + 64
    _model(shape, ctx=8) if n < 2e7 else None  # a real model accepts the shape


def test_family_flops_is_close_to_the_exact_cost():
    for target in (1e7, 1e8, 1e9):
        shape = shape_for_params(target, aspect_ratio=64)
        exact = flops_per_token(shape, 1024, 32_000)
        smooth = family_flops_per_token(non_embedding_params(shape), 1024, 32_000, 64)
        assert abs(smooth / exact - 1) < 0.05


def test_bad_sizes_and_shapes():
    with pytest.raises(ValueError, match="outside the allowed ranges"):
        shape_for_params(1e3)
    with pytest.raises(ValueError, match="outside the allowed ranges"):
        shape_for_params(1e13)
    with pytest.raises(ValueError, match="target must be a positive"):
        shape_for_params(-5)
    with pytest.raises(ValueError, match="num_heads"):
        ModelShape(d_model=64, num_layers=1, num_heads=3, d_ff=192)
    with pytest.raises(ValueError, match="budget"):
        tokens_for_budget(shape_for_d_layers(64, 1), 0, 64, 257)
    assert math.isfinite(flops_per_token(shape_for_d_layers(64, 1), 1, 1))
