"""Parameter and FLOPs accounting for our TransformerLM, and the inverse (a shape for a size).

The model (lm/model/transformer.py) is pre-norm: per block RMSNorm → causal self-attention
(q, k, v, output projections, each d_model×d_model, no biases, RoPE without parameters)
→ RMSNorm → SwiGLU FFN (w1, w3: d_model×d_ff; w2: d_ff×d_model); then a final RMSNorm and
``lm_head`` (d_model×V); ``token_embeddings`` is V×d_model (tied to lm_head optionally).

**Parameters.** ``N`` (the N of the scaling laws) is the non-embedding count, as in Kaplan
et al. (2020)::

    N = num_layers · (4·d² + 3·d·d_ff)

RMSNorm weights (2·d per block + d final) are *not* counted in N: they are a vanishing
fraction (≤ 1% for d ≥ 64 with one layer) and do no matrix-multiply work.
``num_params(shape, vocab_size)`` gives the full count (norms, embeddings, head).

**Training FLOPs per token** (forward + backward = 3 × forward; a matmul of a token's vector
with an in×out matrix costs 2·in·out FLOPs forward and twice that backward)::

    6·N                  every weight matmul in the blocks
  + 6·d·V                lm_head (the embedding lookup is a gather: no FLOPs)
  + 12·num_layers·T·d    attention scores Q·Kᵀ and the weighted sum A·V

Attention term derivation: for one sequence of length T and one layer, Q·Kᵀ is a
(T×d)·(d×T) product over all heads = 2·T²·d FLOPs, and A·V another 2·T²·d; per token that is
4·T·d forward, ×3 for training = 12·T·d per layer. This counts the full T×T score matrix,
which is what our attention computes (masked, not skipped); a causal kernel that skips the
masked half does 6·num_layers·T·d. Softmax, RMSNorm, RoPE and SwiGLU's elementwise products
are O(T·d) per token or less and are ignored (as in Chinchilla's appendix F).

So a run of D tokens costs ``C = D · flops_per_token(shape, T, V)`` and ``C ≈ 6·N·D`` when
d ≫ T and d ≫ V.

**The shape family** (``shape_for_params``): d_model is a multiple of the head dim (32 below
d_model 256, 64 from 256 up), num_heads = d_model / head_dim, d_ff = 8/3·d_model rounded up
to a multiple of 64 (SwiGLU keeps the FFN's parameter count of a 4·d MLP), and the aspect
ratio d_model / num_layers is kept within a factor 2 of a target (default 64: deep-narrow and
shallow-wide models have similar loss at equal N, Kaplan et al. fig. 5). Among the allowed
shapes whose N is within 5% of the target, the one with the aspect ratio nearest the target
wins; when none is that close (tiny models: the widths are coarse), the nearest N wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

D_MODEL_MIN, D_MODEL_MAX = 32, 16384
NUM_LAYERS_MAX = 128
_CLOSE = math.log(1.05)  # shapes within 5% of the target N count as hitting it


@dataclass(frozen=True)
class ModelShape:
    """The size-determining hyperparameters of one TransformerLM."""

    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int

    def __post_init__(self):
        for name in ("d_model", "num_layers", "num_heads", "d_ff"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"ModelShape.{name} must be a positive integer, got {v!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"ModelShape.d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
                "choose num_heads dividing d_model"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


def non_embedding_params(shape: ModelShape) -> int:
    """N = num_layers · (4·d² + 3·d·d_ff): attention and FFN weights, no norms, no embeddings."""
    d = shape.d_model
    return shape.num_layers * (4 * d * d + 3 * d * shape.d_ff)


def num_params(shape: ModelShape, vocab_size: int, *, tie_embeddings: bool = False) -> int:
    """All parameters: N + RMSNorm weights + token_embeddings (+ lm_head unless tied)."""
    d = shape.d_model
    norms = (2 * shape.num_layers + 1) * d
    embed = vocab_size * d * (1 if tie_embeddings else 2)
    return non_embedding_params(shape) + norms + embed


def flops_per_token(shape: ModelShape, context_length: int, vocab_size: int) -> int:
    """Training FLOPs per token: 6·N + 6·d·V + 12·num_layers·T·d (see the module docstring)."""
    _positive(context_length=context_length, vocab_size=vocab_size)
    d = shape.d_model
    return 6 * non_embedding_params(shape) + 6 * d * vocab_size + 12 * shape.num_layers * context_length * d


def training_flops(shape: ModelShape, tokens: float, context_length: int, vocab_size: int) -> float:
    """C for training ``shape`` on ``tokens`` tokens."""
    _positive(tokens=tokens)
    return float(tokens) * flops_per_token(shape, context_length, vocab_size)


def tokens_for_budget(shape: ModelShape, budget: float, context_length: int, vocab_size: int) -> int:
    """D: the number of tokens that spends ``budget`` FLOPs on ``shape`` (rounded down)."""
    _positive(budget=budget)
    return int(budget // flops_per_token(shape, context_length, vocab_size))


def family_flops_per_token(n: float, context_length: int, vocab_size: int, aspect_ratio: float = 64.0) -> float:
    """flops_per_token of the shape family as a smooth function of N (for frontier searches).

    With d_ff = 8/3·d and num_layers = d/aspect, N = 12·d³/aspect, so d = (N·aspect/12)^(1/3)
    and the per-token cost is 6·N + 6·d·V + 12·(d/aspect)·T·d, without the rounding of
    ``shape_for_params`` (which makes the exact cost a step function of N).
    """
    d = (n * aspect_ratio / 12) ** (1 / 3)
    return 6 * n + 6 * d * vocab_size + 12 * (d / aspect_ratio) * context_length * d


def d_ff_for(d_model: int, multiple: int = 64) -> int:
    """8/3·d_model rounded up to a multiple of ``multiple``."""
    return multiple * math.ceil(8 * d_model / 3 / multiple)


def head_dim_for(d_model: int) -> int:
    return 32 if d_model < 256 else 64


def shape_for_d_layers(d_model: int, num_layers: int) -> ModelShape:
    """The family member with this width and depth."""
    hd = head_dim_for(d_model)
    if d_model % hd:
        raise ValueError(f"d_model={d_model} must be a multiple of {hd} (the head dim at this width)")
    return ModelShape(d_model=d_model, num_layers=num_layers, num_heads=d_model // hd, d_ff=d_ff_for(d_model))


def allowed_widths(d_min: int = D_MODEL_MIN, d_max: int = D_MODEL_MAX) -> list[int]:
    return [d for d in range(d_min, d_max + 1, 32) if d % head_dim_for(d) == 0]


def shape_for_params(
    target: float,
    *,
    aspect_ratio: float = 64.0,
    d_model_range: tuple[int, int] = (D_MODEL_MIN, D_MODEL_MAX),
    max_layers: int = NUM_LAYERS_MAX,
) -> ModelShape:
    """The family shape whose non-embedding N is nearest ``target`` (see the module docstring).

    Raises ValueError when the target is outside what the allowed ranges can build.
    """
    _positive(target=target, aspect_ratio=aspect_ratio)
    lo, hi = d_model_range
    if lo < 1 or hi < lo:
        raise ValueError(f"d_model_range={d_model_range} must be (low, high) with 1 <= low <= high")
    best, best_key = None, None
    for d in allowed_widths(max(lo, D_MODEL_MIN), hi):
        # depths keeping d/layers within [aspect/2, 2·aspect]; one layer at any narrower width
        first = max(1, math.ceil(d / (2 * aspect_ratio)))
        last = max(1, min(max_layers, math.floor(2 * d / aspect_ratio)))
        for layers in range(first, last + 1):
            shape = shape_for_d_layers(d, layers)
            miss = abs(math.log(non_embedding_params(shape) / target))
            off_aspect = abs(math.log(d / layers / aspect_ratio))
            key = (0, off_aspect, miss) if miss <= _CLOSE else (1, miss, off_aspect)
            if best_key is None or key < best_key:
                best, best_key = shape, key
    if best is None:
        raise ValueError(f"no shape with d_model in {d_model_range} and aspect ratio {aspect_ratio} (±2×) exists")
    n = non_embedding_params(best)
    if abs(math.log(n / target)) > math.log(1.5):
        raise ValueError(
            f"target N={target:.3g} is outside the allowed ranges (nearest shape {best} has N={n:,}); "
            f"widen d_model_range={d_model_range} or max_layers={max_layers}"
        )
    return best


def _positive(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
