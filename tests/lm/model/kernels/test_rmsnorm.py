"""Fused Triton RMSNorm (CPU interpreter) against the model's torch RMSNorm: output, dx, dweight."""

import pytest
import torch

from lm.model.transformer import RMSNorm


def _compare(shape, device="cpu", dtype=torch.float32, tol=1e-5):
    from lm.model.kernels.rmsnorm import rmsnorm_triton

    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g).to(device, dtype).requires_grad_()
    norm = RMSNorm(shape[-1], impl="torch").to(device, dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[-1], generator=g))
    w = norm.weight.detach().clone().requires_grad_()
    dy = torch.randn(*shape, generator=g).to(device, dtype)
    ref = norm(x)
    dx_ref, dw_ref = torch.autograd.grad(ref, (x, norm.weight), dy)
    out = rmsnorm_triton(x, w, norm.eps)
    dx, dw = torch.autograd.grad(out, (x, w), dy)
    for got, want in ((out, ref), (dx, dx_ref), (dw, dw_ref)):
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_rmsnorm_triton_interpreter_matches_torch():
    pytest.importorskip("triton")
    _compare((3, 7, 48))  # 48 is not a power of two: the column mask matters


def test_model_uses_triton_rmsnorm_when_asked():
    pytest.importorskip("triton")
    norm = RMSNorm(32, impl="triton")
    x = torch.randn(2, 32)
    torch.testing.assert_close(norm(x), RMSNorm(32, impl="torch")(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_rmsnorm_triton_on_gpu_bf16():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _compare((4, 512, 768), device="cuda", dtype=torch.bfloat16, tol=2e-2)
