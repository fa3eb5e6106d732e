"""A decoder-only Transformer language model (RMSNorm, RoPE, SwiGLU, pre-norm), in one file.

Read top to bottom: building blocks (Linear, Embedding, RMSNorm, RoPE, softmax, attention,
SwiGLU), then ``CausalSelfAttention``, ``TransformerBlock`` and ``TransformerLM``.

    from lm.model import TransformerLM, ModelConfig
    cfg = ModelConfig(vocab_size=257, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=172)
    model = TransformerLM(cfg)
    logits = model(ids)                  # ids (B, T) int64 -> logits (B, T, vocab_size)

State-dict keys follow the CS336 adapters: ``token_embeddings.weight``,
``layers.N.attn.{q,k,v,output}_proj.weight``, ``layers.N.ln1.weight``, ``layers.N.ln2.weight``,
``layers.N.ffn.{w1,w2,w3}.weight``, ``ln_final.weight``, ``lm_head.weight`` (with
``tie_embeddings`` the last one is the same tensor as ``token_embeddings.weight``).

Attention implementations (``ModelConfig.attention``): ``math`` (ours, below; ``reference`` is
its old name), ``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``), ``flash_torch``
(our tiled FlashAttention-2 in plain PyTorch), ``triton`` (our FlashAttention-2 Triton kernel;
CUDA, or CPU under ``TRITON_INTERPRET=1``), ``auto`` (sdpa: torch's fused kernels were the
fastest on both CPU and GPU in bench/gpu_kernels.py). ``norm``: ``torch``, ``triton`` (fused
RMSNorm) or ``auto`` (triton on CUDA when importable and not under torch.compile, else torch).

``torch.compile(model, fullgraph=True)`` traces forward and backward without a graph break
(tested): RoPE is real-valued (cos/sin tables; inductor generates no code for complex tensors),
and the Triton kernels are registered as torch custom ops, opaque to the compiler.
Mixed precision: under ``torch.autocast(dtype=bfloat16)`` the matmuls run in bf16 while
RMSNorm, RoPE and the math attention's softmax compute in float32 (and the loss, in
lm.train.loss); the weights stay float32.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch.utils.checkpoint import checkpoint

from lm.config import Config
from lm.model.kernels.flash_torch import flash_attention_torch

AttentionKind = Literal["auto", "math", "sdpa", "flash_torch", "triton"]
NormKind = Literal["auto", "torch", "triton"]


class ModelConfig(Config):
    """Shape of a TransformerLM. Cross-field errors name the field at fault."""

    vocab_size: Annotated[int, Field(gt=0, le=1 << 24)] | Literal["auto"] = Field(
        description="Number of token ids (tokenizer vocabulary incl. special tokens), or 'auto': the vocab_size of the "
        "token shards trained on (resolved by the trainer from their manifest before the model is built)."
    )
    context_length: int = Field(gt=0, le=1 << 20, description="Longest sequence the model is trained and run on.")
    d_model: int = Field(gt=0, le=1 << 16, description="Width of the residual stream.")
    num_layers: int = Field(gt=0, le=1024, description="Number of Transformer blocks.")
    num_heads: int = Field(gt=0, le=1024, description="Attention heads per block; d_model must be divisible by it.")
    d_ff: int = Field(
        gt=0, le=1 << 20, description="Hidden width of the SwiGLU feed-forward (≈ 8/3 · d_model, multiple of 64)."
    )
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency Θ.")
    rope_max_seq_len: int | None = Field(
        None,
        ge=1,
        le=1 << 22,
        description="Longest position RoPE tables cover (default: context_length); must be ≥ context_length.",
    )
    rms_eps: float = Field(1e-5, gt=0, description="Epsilon inside RMSNorm's square root.")
    tie_embeddings: bool = Field(False, description="Share the weights of token_embeddings and lm_head.")
    attention: AttentionKind = Field(
        "auto",
        description="Attention implementation: auto (= sdpa), math (plain softmax(QKᵀ)V, float32 softmax), sdpa "
        "(torch's fused kernels), triton (our FlashAttention-2 kernel; CUDA or TRITON_INTERPRET=1) or flash_torch "
        "(the same algorithm in torch tiles). All compute the same function; 'reference' is accepted for math.",
    )
    norm: NormKind = Field("auto", description="RMSNorm implementation: auto (Triton on CUDA), torch or triton.")

    @field_validator("attention", mode="before")
    @classmethod
    def _old_attention_name(cls, v):
        return "math" if v == "reference" else v  # checkpoints written before 'math' was named so

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                f"pick num_heads among the divisors of d_model"
            )
        if (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"head size d_model/num_heads={self.d_model // self.num_heads} "
                "must be even for RoPE (d_model, num_heads)"
            )
        if self.rope_max_seq_len is not None and self.context_length > self.rope_max_seq_len:
            raise ValueError(
                f"context_length={self.context_length} is longer than rope_max_seq_len={self.rope_max_seq_len}; "
                "raise rope_max_seq_len or shorten context_length"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


# --------------------------------------------------------------------------- building blocks


class Linear(nn.Module):
    """y = x Wᵀ without bias; W ~ truncated N(0, 2/(d_in+d_out)) clipped at ±3σ."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        std = math.sqrt(2.0 / (in_features + out_features))
        nn.init.trunc_normal_(self.weight, 0.0, std, -3 * std, 3 * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear(x, W) = x @ W.T; unlike the explicit transpose it hands W's grad back contiguous (no copy)
        return F.linear(x, self.weight)


class Embedding(nn.Module):
    """Lookup table (num_embeddings, embedding_dim); init truncated N(0, 1) clipped at ±3."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.weight, 0.0, 1.0, -3.0, 3.0)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # F.embedding = weight[token_ids], with a dense backward kernel (index_put accumulation is slower)
        return F.embedding(token_ids, self.weight)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · g, computed in float32 (bf16 squares overflow/underflow)."""

    def __init__(self, d_model: int, eps: float = 1e-5, impl: NormKind = "torch", device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.impl = impl
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # auto: our fused kernel on CUDA, except under torch.compile, whose generated kernel fuses it anyway
        auto_triton = self.impl == "auto" and x.is_cuda and not torch.compiler.is_compiling() and TRITON_AVAILABLE
        if self.impl == "triton" or auto_triton:
            from lm.model.kernels.rmsnorm import rmsnorm_triton  # imports triton: only when asked for

            return rmsnorm_triton(x, self.weight, self.eps)
        in_dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(in_dtype)


class RotaryEmbedding(nn.Module):
    """Rotates each adjacent pair (x[2i], x[2i+1]) by angle pos · Θ^(-2i/d_k)."""

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None):
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)  # (d_k/2,)
        angles = torch.arange(max_seq_len, device=device, dtype=torch.float64)[:, None] * inv_freq  # (L, d_k/2)
        # Not persistent: derived from the config, so checkpoints hold only learned weights.
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        self.max_seq_len = max_seq_len

    def rotation(self, token_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of pos·θ_k for these positions, each (..., T, d_k/2); looked up once per model forward."""
        return self.cos[token_positions], self.sin[token_positions]

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor) -> torch.Tensor:
        # x (..., T, d_k); token_positions (..., T) broadcastable to x's leading dims
        if int(token_positions.max()) >= self.max_seq_len:
            raise ValueError(f"token position {int(token_positions.max())} ≥ RoPE max_seq_len {self.max_seq_len}")
        return apply_rope(x, *self.rotation(token_positions))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (a, b) = (x[2i], x[2i+1]) of x (..., T, d_k): (a·cos − b·sin, a·sin + b·cos), in float32.

    The real and imaginary parts of (a + ib)·e^{iθ}: bit for bit what the complex multiply this
    replaced computed (tested against a checkpoint of that code), but real-valued, so
    torch.compile fuses it (inductor generates no code for complex tensors).
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., T, d_k/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax that subtracts the max first, so exp never overflows."""
    x = x - x.amax(dim=dim, keepdim=True)
    e = x.exp()
    return e / e.sum(dim=dim, keepdim=True)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d_k)) v; ``mask`` True where a query may attend a key. Any leading dims.

    q (..., Tq, d_k), k (..., Tk, d_k), v (..., Tk, d_v), mask (..., Tq, Tk) -> (..., Tq, d_v).
    The softmax runs in float32 whatever the input dtype (bf16 under autocast).
    """
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.shape[-1])  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, dim=-1).to(v.dtype) @ v


class SwiGLU(nn.Module):
    """w2(SiLU(w1 x) ⊙ w3 x)."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device, dtype)
        self.w2 = Linear(d_ff, d_model, device, dtype)
        self.w3 = Linear(d_model, d_ff, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # silu(a) = a·σ(a), one fused kernel


TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None  # looked up, not imported (that takes a while)


# --------------------------------------------------------------------------- attention, block, model


class KVCache:
    """Keys and values of the tokens seen so far, per layer: (B, H, max_len, d_head) buffers."""

    def __init__(self, num_layers: int, batch: int, num_heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = [
            torch.zeros(batch, num_heads, max_len, head_dim, device=device, dtype=dtype) for _ in range(num_layers)
        ]
        self.v = [
            torch.zeros(batch, num_heads, max_len, head_dim, device=device, dtype=dtype) for _ in range(num_layers)
        ]
        self.length = 0  # tokens already cached (same for all layers)
        self.max_len = max_len


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.attention = cfg.attention
        self.q_proj = Linear(cfg.d_model, cfg.d_model, device, dtype)
        self.k_proj = Linear(cfg.d_model, cfg.d_model, device, dtype)
        self.v_proj = Linear(cfg.d_model, cfg.d_model, device, dtype)
        self.output_proj = Linear(cfg.d_model, cfg.d_model, device, dtype)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.num_heads, C // self.num_heads).transpose(1, 2)  # (B, H, T, dh)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = apply_rope(self._heads(self.q_proj(x)), cos, sin)  # (B, H, T, dh)
        k = apply_rope(self._heads(self.k_proj(x)), cos, sin)
        v = self._heads(self.v_proj(x))
        if cache is None:
            y = causal_attention(q, k, v, self.attention)
        else:
            start = cache.length
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k_all = cache.k[layer][:, :, : start + T]
            v_all = cache.v[layer][:, :, : start + T]
            # query i sits at absolute position start+i and sees keys 0..start+i
            mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
            if self.attention == "math":
                y = scaled_dot_product_attention(q, k_all, v_all, mask)
            else:
                y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.output_proj(y.transpose(1, 2).reshape(B, T, C))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str) -> torch.Tensor:
    """Causal attention over (B, H, T, dh) with the chosen implementation."""
    if kind in ("auto", "sdpa"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if kind == "math":
        T = q.shape[-2]
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        return scaled_dot_product_attention(q, k, v, mask)
    if kind == "flash_torch":
        return flash_attention_torch(q, k, v, causal=True)
    if kind == "triton":
        from lm.model.kernels.flash_triton import flash_attention_triton  # imports triton: only when asked for

        return flash_attention_triton(q, k, v, causal=True)
    raise ValueError(f"unknown attention kind {kind!r}; use auto, math, sdpa, flash_torch or triton")


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then + ffn(ln2(x))."""

    def __init__(self, cfg: ModelConfig, device=None, dtype=None):
        super().__init__()
        self.ln1 = RMSNorm(cfg.d_model, cfg.rms_eps, cfg.norm, device, dtype)
        self.attn = CausalSelfAttention(cfg, device, dtype)
        self.ln2 = RMSNorm(cfg.d_model, cfg.rms_eps, cfg.norm, device, dtype)
        self.ffn = SwiGLU(cfg.d_model, cfg.d_ff, device, dtype)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cos, sin, cache, layer)
        return x + self.ffn(self.ln2(x))


class TransformerLM(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size).

    ``checkpoint_blocks = True`` recomputes each block's activations in backward instead of
    keeping them (activation checkpointing: less memory, about one more forward of compute);
    it is a way of running, not part of the model, so it is an attribute and not in the config.
    """

    def __init__(self, config: ModelConfig | dict, device=None, dtype=None):
        super().__init__()
        cfg = config if isinstance(config, ModelConfig) else ModelConfig.model_validate(config)
        if cfg.vocab_size == "auto":
            raise ValueError(
                "ModelConfig.vocab_size is 'auto': set it to the tokenizer's vocabulary size "
                "(the trainer does so from the token manifest: lm.train.config.resolve_vocab_size)"
            )
        self.config = cfg
        self.checkpoint_blocks = False
        self.token_embeddings = Embedding(cfg.vocab_size, cfg.d_model, device, dtype)
        # RoPE tables are buffers (derived from the config), so they add no state-dict keys
        self.rope = RotaryEmbedding(cfg.rope_theta, cfg.head_dim, cfg.rope_max_seq_len or cfg.context_length, device)
        self.layers = nn.ModuleList(TransformerBlock(cfg, device, dtype) for _ in range(cfg.num_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.rms_eps, cfg.norm, device, dtype)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, device, dtype)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token_embeddings.weight

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise ValueError(f"sequence of {start + T} tokens exceeds context_length={self.config.context_length}")
        positions = torch.arange(start, start + T, device=ids.device)  # (T,)
        cos, sin = self.rope.rotation(positions)  # (T, dh/2) each, shared by every layer
        x = self.token_embeddings(ids)  # (B, T, C)
        recompute = self.checkpoint_blocks and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.layers):
            if recompute:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, i)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.ln_final(x))  # (B, T, V)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.token_embeddings.weight
        c = self.config
        return KVCache(c.num_layers, batch, c.num_heads, max_len or c.context_length, c.head_dim, p.device, p.dtype)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters (each shared tensor once); without the embedding table by default."""
        n = sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
        if non_embedding and not self.config.tie_embeddings:
            n -= self.token_embeddings.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6·N (matmuls fwd+bwd) + 12·L·d·T (attention scores and mixing)."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.num_layers * c.d_model * c.context_length
