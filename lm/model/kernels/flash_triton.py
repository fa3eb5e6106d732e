"""FlashAttention-2 forward and backward in Triton, as a ``torch.autograd.Function``.

The same algorithm as ``flash_torch`` (read that first): the forward streams key tiles through
an online softmax and saves only O and the logsumexp L per query row; the backward recomputes
P = exp(S − L) per tile. Two backward kernels avoid atomics: one program per key tile
accumulates dK, dV over query tiles; one program per query tile accumulates dQ over key tiles.
Exponentials use exp2 with log2(e) folded into the scale (cheaper on GPUs).

Shapes: q (B, H, Tq, d), k/v (B, H, Tk, d), d a power of two ≥ 16; causal needs Tq == Tk.
Tiles are at least 16×16 (``tl.dot``'s minimum). Runs on CUDA, or on CPU with TRITON_INTERPRET=1.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _fwd(
    Q,
    K,
    V,
    Out,
    L,
    sqb,
    sqt,
    skb,
    skt,
    svb,
    svt,
    sob,
    sot,
    Tq,
    Tk,
    qk_scale,
    CAUSAL: tl.constexpr,
    D: tl.constexpr,
    BQ: tl.constexpr,
    BK: tl.constexpr,
):
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    offs_q = qt * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + bh * sqb + offs_q[:, None] * sqt + offs_d[None, :], mask=offs_q[:, None] < Tq, other=0.0)
    m = tl.full([BQ], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BQ], dtype=tl.float32)
    acc = tl.zeros([BQ, D], dtype=tl.float32)
    hi = tl.minimum(Tk, (qt + 1) * BQ) if CAUSAL else Tk
    for start in range(0, hi, BK):
        offs_k = start + tl.arange(0, BK)
        kmask = offs_k[:, None] < Tk
        k = tl.load(K + bh * skb + offs_k[:, None] * skt + offs_d[None, :], mask=kmask, other=0.0)
        v = tl.load(V + bh * svb + offs_k[:, None] * svt + offs_d[None, :], mask=kmask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale  # (BQ, BK), log2 domain
        keep = offs_k[None, :] < Tk
        if CAUSAL:
            keep = keep & (offs_k[None, :] <= offs_q[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    acc = acc / l_i[:, None]
    qmask = offs_q < Tq
    tl.store(
        Out + bh * sob + offs_q[:, None] * sot + offs_d[None, :], acc.to(Out.dtype.element_ty), mask=qmask[:, None]
    )
    tl.store(L + bh * Tq + offs_q, (m + tl.math.log2(l_i)) * 0.6931471805599453, mask=qmask)  # natural-log lse


@triton.jit
def _bwd_dkdv(
    Q,
    K,
    V,
    DO,
    L,
    Dl,
    DK,
    DV,
    sqb,
    sqt,
    skb,
    skt,
    svb,
    svt,
    sdob,
    sdot,
    Tq,
    Tk,
    sm_scale,
    CAUSAL: tl.constexpr,
    D: tl.constexpr,
    BQ: tl.constexpr,
    BK: tl.constexpr,
):
    kt = tl.program_id(0)
    bh = tl.program_id(1)
    offs_k = kt * BK + tl.arange(0, BK)
    offs_d = tl.arange(0, D)
    kmask = offs_k[:, None] < Tk
    k = tl.load(K + bh * skb + offs_k[:, None] * skt + offs_d[None, :], mask=kmask, other=0.0)
    v = tl.load(V + bh * svb + offs_k[:, None] * svt + offs_d[None, :], mask=kmask, other=0.0)
    dk = tl.zeros([BK, D], dtype=tl.float32)
    dv = tl.zeros([BK, D], dtype=tl.float32)
    lo = (kt * BK // BQ) * BQ if CAUSAL else 0  # earlier query tiles never see this key tile
    for start in range(lo, Tq, BQ):
        offs_q = start + tl.arange(0, BQ)
        qmask = offs_q[:, None] < Tq
        q = tl.load(Q + bh * sqb + offs_q[:, None] * sqt + offs_d[None, :], mask=qmask, other=0.0)
        do = tl.load(DO + bh * sdob + offs_q[:, None] * sdot + offs_d[None, :], mask=qmask, other=0.0)
        lse = tl.load(L + bh * Tq + offs_q, mask=offs_q < Tq, other=0.0)
        delta = tl.load(Dl + bh * Tq + offs_q, mask=offs_q < Tq, other=0.0)
        s = tl.dot(q, tl.trans(k)) * (sm_scale * 1.4426950408889634)  # (BQ, BK)
        keep = (offs_q[:, None] < Tq) & (offs_k[None, :] < Tk)
        if CAUSAL:
            keep = keep & (offs_k[None, :] <= offs_q[:, None])
        p = tl.where(keep, tl.math.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(
        DK + bh * skb + offs_k[:, None] * skt + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=kmask
    )
    tl.store(DV + bh * svb + offs_k[:, None] * svt + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kmask)


@triton.jit
def _bwd_dq(
    Q,
    K,
    V,
    DO,
    L,
    Dl,
    DQ,
    sqb,
    sqt,
    skb,
    skt,
    svb,
    svt,
    sdob,
    sdot,
    Tq,
    Tk,
    sm_scale,
    CAUSAL: tl.constexpr,
    D: tl.constexpr,
    BQ: tl.constexpr,
    BK: tl.constexpr,
):
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    offs_q = qt * BQ + tl.arange(0, BQ)
    offs_d = tl.arange(0, D)
    qmask = offs_q[:, None] < Tq
    q = tl.load(Q + bh * sqb + offs_q[:, None] * sqt + offs_d[None, :], mask=qmask, other=0.0)
    do = tl.load(DO + bh * sdob + offs_q[:, None] * sdot + offs_d[None, :], mask=qmask, other=0.0)
    lse = tl.load(L + bh * Tq + offs_q, mask=offs_q < Tq, other=0.0)
    delta = tl.load(Dl + bh * Tq + offs_q, mask=offs_q < Tq, other=0.0)
    dq = tl.zeros([BQ, D], dtype=tl.float32)
    hi = tl.minimum(Tk, (qt + 1) * BQ) if CAUSAL else Tk
    for start in range(0, hi, BK):
        offs_k = start + tl.arange(0, BK)
        kmask = offs_k[:, None] < Tk
        k = tl.load(K + bh * skb + offs_k[:, None] * skt + offs_d[None, :], mask=kmask, other=0.0)
        v = tl.load(V + bh * svb + offs_k[:, None] * svt + offs_d[None, :], mask=kmask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * (sm_scale * 1.4426950408889634)
        keep = (offs_q[:, None] < Tq) & (offs_k[None, :] < Tk)
        if CAUSAL:
            keep = keep & (offs_k[None, :] <= offs_q[:, None])
        p = tl.where(keep, tl.math.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(
        DQ + bh * sqb + offs_q[:, None] * sqt + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=qmask
    )


def _tiles(device: torch.device, d: int) -> tuple[int, int, int, int]:
    """(fwd BQ, fwd BK, bwd BQ, bwd BK): small under the CPU interpreter, GPU-sized on CUDA."""
    if device.type != "cuda":
        return 16, 16, 16, 16
    return (128, 64, 64, 64) if d <= 64 else (128, 32, 64, 32)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-2], x.shape[-1]).contiguous()  # (B*H, T, d)


def flash_forward_triton(q, k, v, causal: bool = False):
    """Returns (o, lse) like ``flash_forward_torch``."""
    *lead, Tq, d = q.shape
    Tk = k.shape[-2]
    if d < 16 or d & (d - 1):
        raise ValueError(f"head size {d} must be a power of two ≥ 16 for the Triton FlashAttention kernel")
    if causal and Tq != Tk:
        raise ValueError(f"causal FlashAttention needs as many queries as keys (got {Tq} and {Tk})")
    q3, k3, v3 = _flat(q), _flat(k), _flat(v)
    o = torch.empty_like(q3)
    lse = torch.empty(q3.shape[0], Tq, device=q.device, dtype=torch.float32)
    bq, bk, _, _ = _tiles(q.device, d)
    grid = (triton.cdiv(Tq, bq), q3.shape[0])
    _fwd[grid](
        q3,
        k3,
        v3,
        o,
        lse,
        q3.stride(0),
        q3.stride(1),
        k3.stride(0),
        k3.stride(1),
        v3.stride(0),
        v3.stride(1),
        o.stride(0),
        o.stride(1),
        Tq,
        Tk,
        LOG2E / math.sqrt(d),
        CAUSAL=causal,
        D=d,
        BQ=bq,
        BK=bk,
    )
    return o.view(*lead, Tq, d), lse.view(*lead, Tq)


def flash_backward_triton(q, k, v, o, lse, do, causal: bool = False):
    *lead, Tq, d = q.shape
    Tk = k.shape[-2]
    q3, k3, v3, o3, do3 = _flat(q), _flat(k), _flat(v), _flat(o), _flat(do)
    lse3 = lse.reshape(-1, Tq).contiguous()
    delta = (do3.float() * o3.float()).sum(-1)  # (B*H, Tq) = rowsum(dO ∘ O)
    dq, dk, dv = torch.empty_like(q3), torch.empty_like(k3), torch.empty_like(v3)
    _, _, bq, bk = _tiles(q.device, d)
    args = (
        q3.stride(0),
        q3.stride(1),
        k3.stride(0),
        k3.stride(1),
        v3.stride(0),
        v3.stride(1),
        do3.stride(0),
        do3.stride(1),
        Tq,
        Tk,
        1.0 / math.sqrt(d),
    )
    _bwd_dkdv[(triton.cdiv(Tk, bk), q3.shape[0])](
        q3, k3, v3, do3, lse3, delta, dk, dv, *args, CAUSAL=causal, D=d, BQ=bq, BK=bk
    )
    _bwd_dq[(triton.cdiv(Tq, bq), q3.shape[0])](
        q3, k3, v3, do3, lse3, delta, dq, *args, CAUSAL=causal, D=d, BQ=bq, BK=bk
    )
    return dq.view(q.shape), dk.view(k.shape), dv.view(v.shape)


# Registered as torch custom ops so torch.compile treats each launch as one opaque node
# (no graph break, no tracing into Triton's Python launcher); autograd pairs them below.


@torch.library.custom_op("lm::flash_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = flash_forward_triton(q, k, v, causal)
    return o, lse


@_fwd_op.register_fake
def _(q, k, v, causal):
    # contiguous, like the real outputs (empty_like would copy q's strides: a transposed view)
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("lm::flash_attention_bwd", mutates_args=())
def _bwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return flash_backward_triton(q, k, v, o, lse, do, causal)


@_bwd_op.register_fake
def _(q, k, v, o, lse, do, causal):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.causal = causal


def _backward(ctx, do, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _bwd_op(q, k, v, o, lse, do.contiguous(), ctx.causal)
    return dq, dk, dv, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def flash_attention_triton(q, k, v, causal: bool = False) -> torch.Tensor:
    """Attention output (B, H, Tq, d), differentiable, for q (B, H, Tq, d) and k, v (B, H, Tk, d)."""
    o, _ = _fwd_op(q, k, v, causal)
    return o
