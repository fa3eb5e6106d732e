"""FlashAttention-2 in plain PyTorch: the tiled algorithm, for reading and as a CPU/GPU fallback.

Forward (per query tile Qi, streaming key tiles Kj, Vj): keep a running row max m, normalizer l
and unnormalized output O; rescale them when the max grows (online softmax). Save only O and the
logsumexp L = m + log l per query row. Backward recomputes P = exp(Qi Kjᵀ·s − Li) tile by tile
with D = rowsum(dO ∘ O), so no (T × T) matrix is ever stored.

Shapes: q (..., Tq, d), k/v (..., Tk, d) -> o (..., Tq, d), lse (..., Tq). Causal assumes query
i and key j sit at the same positions (Tq == Tk), as in training.
"""

from __future__ import annotations

import math

import torch

TILE_Q = 64
TILE_K = 64


def _tile_mask(i0: int, i1: int, j0: int, j1: int, device) -> torch.Tensor:
    rows = torch.arange(i0, i1, device=device)[:, None]
    cols = torch.arange(j0, j1, device=device)[None, :]
    return cols <= rows  # (tq, tk) True where allowed


def flash_forward_torch(q, k, v, causal: bool = False, tile_q: int = TILE_Q, tile_k: int = TILE_K):
    """Returns (o, lse) computed tile by tile in float32."""
    *lead, Tq, d = q.shape
    Tk = k.shape[-2]
    scale = 1.0 / math.sqrt(d)
    qf, kf, vf = q.float(), k.float(), v.float()
    o = torch.empty(*lead, Tq, d, device=q.device, dtype=torch.float32)
    lse = torch.empty(*lead, Tq, device=q.device, dtype=torch.float32)
    for i0 in range(0, Tq, tile_q):
        i1 = min(i0 + tile_q, Tq)
        qi = qf[..., i0:i1, :]
        m = torch.full((*lead, i1 - i0), float("-inf"), device=q.device)
        l_i = torch.zeros(*lead, i1 - i0, device=q.device)
        acc = torch.zeros(*lead, i1 - i0, d, device=q.device)
        k_end = min(Tk, i1) if causal else Tk  # tiles wholly above the diagonal are skipped
        for j0 in range(0, k_end, tile_k):
            j1 = min(j0 + tile_k, k_end)
            s = qi @ kf[..., j0:j1, :].transpose(-2, -1) * scale  # (..., tq, tk)
            if causal and j1 - 1 > i0:
                s = s.masked_fill(~_tile_mask(i0, i1, j0, j1, q.device), float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new)  # rescales what was accumulated under the old max
            l_i = alpha * l_i + p.sum(-1)
            acc = alpha[..., None] * acc + p @ vf[..., j0:j1, :]
            m = m_new
        o[..., i0:i1, :] = acc / l_i[..., None]
        lse[..., i0:i1] = m + torch.log(l_i)
    return o.to(q.dtype), lse


def flash_backward_torch(q, k, v, o, lse, do, causal: bool = False, tile_q: int = TILE_Q, tile_k: int = TILE_K):
    """dq, dk, dv by recomputing P tile by tile from the saved logsumexp."""
    *lead, Tq, d = q.shape
    Tk = k.shape[-2]
    scale = 1.0 / math.sqrt(d)
    qf, kf, vf, dof = q.float(), k.float(), v.float(), do.float()
    D = (dof * o.float()).sum(-1)  # (..., Tq) = rowsum(dO ∘ O)
    dq = torch.zeros_like(qf)
    dk = torch.zeros_like(kf)
    dv = torch.zeros_like(vf)
    for j0 in range(0, Tk, tile_k):
        j1 = min(j0 + tile_k, Tk)
        kj, vj = kf[..., j0:j1, :], vf[..., j0:j1, :]
        i_start = (j0 // tile_q) * tile_q if causal else 0  # query tiles wholly before this key tile see none of it
        for i0 in range(i_start, Tq, tile_q):
            i1 = min(i0 + tile_q, Tq)
            s = qf[..., i0:i1, :] @ kj.transpose(-2, -1) * scale
            if causal and j1 - 1 > i0:
                s = s.masked_fill(~_tile_mask(i0, i1, j0, j1, q.device), float("-inf"))
            p = torch.exp(s - lse[..., i0:i1, None])  # (..., tq, tk)
            doi = dof[..., i0:i1, :]
            dv[..., j0:j1, :] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)
            ds = p * (dp - D[..., i0:i1, None])
            dq[..., i0:i1, :] += ds @ kj * scale
            dk[..., j0:j1, :] += ds.transpose(-2, -1) @ qf[..., i0:i1, :] * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class FlashAttentionTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal: bool = False):
        o, lse = flash_forward_torch(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward_torch(q, k, v, o, lse, do, ctx.causal)
        return dq, dk, dv, None


def flash_attention_torch(q, k, v, causal: bool = False) -> torch.Tensor:
    return FlashAttentionTorch.apply(q, k, v, causal)
