"""FlashAttention-2 (plain-torch tiles and Triton under TRITON_INTERPRET=1) against reference attention.

Output, logsumexp and dQ/dK/dV at rtol=atol=1e-2, causal and not, with sequence lengths that are
not multiples of the tile so the boundary masks are exercised. Real-GPU tests are marked ``gpu``.
"""

import math

import pytest
import torch

from lm.model.kernels.flash_torch import flash_attention_torch, flash_forward_torch
from lm.model.transformer import scaled_dot_product_attention


def _inputs(B=1, H=2, Tq=40, Tk=40, d=16, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda T: torch.randn(B, H, T, d, generator=g).to(device=device, dtype=dtype).requires_grad_()
    return make(Tq), make(Tk), make(Tk)


def _reference(q, k, v, causal):
    Tq, Tk = q.shape[-2], k.shape[-2]
    mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril() if causal else None
    o = scaled_dot_product_attention(q.float(), k.float(), v.float(), mask)
    s = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~mask, float("-inf"))
    return o, torch.logsumexp(s, -1)


def _check(attn, forward, causal, **kw):
    q, k, v = _inputs(**kw)
    o_ref, lse_ref = _reference(q, k, v, causal)
    do = torch.randn_like(o_ref)
    dq_ref, dk_ref, dv_ref = torch.autograd.grad(o_ref, (q, k, v), do)
    o = attn(q, k, v, causal)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do.to(o.dtype))
    _, lse = forward(q.detach(), k.detach(), v.detach(), causal)
    tol = dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(o.float(), o_ref, **tol)
    torch.testing.assert_close(lse.float(), lse_ref, **tol)
    for got, ref in ((dq, dq_ref), (dk, dk_ref), (dv, dv_ref)):
        torch.testing.assert_close(got.float(), ref, **tol)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_torch_matches_reference(causal, monkeypatch):
    import lm.model.kernels.flash_torch as ft

    monkeypatch.setattr(ft, "TILE_Q", 16)  # several tiles at this length, incl. a partial last one
    monkeypatch.setattr(ft, "TILE_K", 16)
    _check(flash_attention_torch, lambda q, k, v, c: flash_forward_torch(q, k, v, c, 16, 16), causal, Tq=40, Tk=40)


def test_flash_torch_non_causal_with_more_keys_than_queries():
    _check(flash_attention_torch, flash_forward_torch, False, Tq=24, Tk=70)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_triton_interpreter_matches_reference(causal):
    pytest.importorskip("triton")
    from lm.model.kernels.flash_triton import flash_attention_triton, flash_forward_triton

    _check(flash_attention_triton, flash_forward_triton, causal, B=1, H=2, Tq=40, Tk=40, d=16)


def test_flash_triton_rejects_bad_head_size():
    pytest.importorskip("triton")
    from lm.model.kernels.flash_triton import flash_forward_triton

    q, k, v = _inputs(d=12)
    with pytest.raises(ValueError, match="power of two"):
        flash_forward_triton(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_flash_triton_on_gpu_bf16(causal):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from lm.model.kernels.flash_triton import flash_attention_triton, flash_forward_triton

    _check(
        flash_attention_triton,
        flash_forward_triton,
        causal,
        B=2,
        H=4,
        Tq=1000,
        Tk=1000,
        d=64,
        device="cuda",
        dtype=torch.bfloat16,
    )


@pytest.mark.parametrize("tiles, d, causal", [((128, 64, 64, 64), 64, True), ((128, 32, 64, 32), 128, False)])
def test_flash_triton_gpu_tile_shapes_under_interpreter(tiles, d, causal, monkeypatch):
    """The tile sizes used on CUDA (query tile ≠ key tile; 200 is no multiple of either) are exact too."""
    pytest.importorskip("triton")
    import lm.model.kernels.flash_triton as ft

    monkeypatch.setattr(ft, "_tiles", lambda device, dd: tiles)
    _check(ft.flash_attention_triton, ft.flash_forward_triton, causal, B=1, H=1, Tq=200, Tk=200, d=d)
