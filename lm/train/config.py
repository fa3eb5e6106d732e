"""What a training run needs (``TrainConfig``), and the checks made with it before training starts.

    cfg = TrainConfig(
        model=ModelConfig(vocab_size="auto", ...), data="outputs/tokenize/<fp>", out_dir="runs/x", max_steps=100
    )
    # "auto" -> the token manifest's vocab_size; a model too small for the tokens fails here
    cfg = resolve_vocab_size(cfg)

Fields fall in three groups, which decide what a resume may change (``changed_settings``) and
what the pretrain stage's fingerprint covers:

- ``RUN_SETTINGS``: how the run executes, not what it computes (paths, device, compile,
  intervals, strategy, kernels): free to change on resume; ``NOT_FINGERPRINTED`` lists those
  the stage fingerprint leaves out (intervals and strategy stay in: they change what is logged).
- ``LENGTH_SETTINGS``: how long to train (``max_steps``, ``max_tokens``): fingerprinted, and
  free to change on resume (extending a run is what resuming is for).
- everything else (the model's shape, optimizer, schedule, batch, seed, dtype): a resume that
  changes one is refused unless ``allow_changed``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lm.config import Config
from lm.data.shards import Manifest, read_manifest
from lm.model.transformer import ModelConfig
from lm.train.optim import AdamWImpl
from lm.train.strategy import STRATEGIES

RUN_SETTINGS = frozenset(
    {
        "data",
        "out_dir",
        "device",
        "compile",
        "compile_backend",
        "log_interval",
        "resume",
        "max_seconds",
        "eval_interval",
        "eval_batches",
        "checkpoint_interval",
        "keep_last",
        "peak_flops",
        "strategy",
        "bucket_size_mb",
        "allow_tf32",
        "activation_checkpointing",
        "optimizer_impl",
        "allow_changed",
        "model.attention",
        "model.norm",
    }
)
LENGTH_SETTINGS = frozenset({"max_steps", "max_tokens"})
# Left out of the pretrain stage's fingerprint: the run settings that existed when it was
# introduced plus every one added since (so a config that sets none of them keeps its fingerprint).
NOT_FINGERPRINTED = frozenset(
    {
        "data",
        "out_dir",
        "device",
        "compile",
        "log_interval",
        "resume",
        "max_seconds",
        "compile_backend",
        "allow_tf32",
        "activation_checkpointing",
        "optimizer_impl",
        "allow_changed",
    }
)


class TrainConfig(Config):
    """Everything a training run needs; also the form of the pretrain flow's training part."""

    model: ModelConfig = Field(
        description="Shape of the Transformer to train (vocab_size 'auto' = the token manifest's)."
    )
    data: str | None = Field(
        None, description="Token-shard directory (holding _manifest.json) from the tokenize stage."
    )
    out_dir: str | None = Field(None, description="Run directory: checkpoints/, metrics.jsonl, summary.json.")
    batch_size: int = Field(
        16,
        gt=0,
        le=1 << 16,
        description="Sequences per micro-batch, all ranks together (each rank takes batch_size / world_size).",
    )
    grad_accum: int = Field(1, gt=0, le=1 << 16, description="Micro-batches accumulated per optimizer step.")
    max_steps: int | None = Field(
        None, gt=0, le=1000000000, description="Optimizer steps to run (give this or max_tokens)."
    )
    max_tokens: int | None = Field(None, gt=0, le=10**15, description="Training tokens to consume; converted to steps.")
    max_seconds: float | None = Field(
        None, gt=0, description="Stop early (with a checkpoint) after this much wall time."
    )
    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    min_lr: float | None = Field(None, ge=0, description="Final learning rate of the cosine (default lr/10).")
    warmup_steps: int = Field(0, ge=0, le=1000000000, description="Linear warmup steps.")
    cosine_steps: int | None = Field(
        None, gt=0, le=1000000000, description="Step where the cosine reaches min_lr (default: the last step)."
    )
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW β1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW β2.")
    eps: float = Field(1e-8, gt=0, description="AdamW ε.")
    optimizer_impl: AdamWImpl = Field(
        "fused",
        description="How our AdamW runs the same update: fused (torch's fused kernel; fastest on CPU and GPU), "
        "foreach (one multi-tensor op per line) or for_loop (one parameter at a time; the readable one).",
    )
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this (0 = off).")
    eval_interval: int = Field(100, gt=0, le=1000000000, description="Steps between validation-loss evaluations.")
    eval_batches: int = Field(10, gt=0, le=1_000_000, description="Micro-batches per validation-loss evaluation.")
    checkpoint_interval: int = Field(
        100, gt=0, le=1000000000, description="Steps between checkpoints (the last step is always saved)."
    )
    keep_last: int = Field(2, gt=0, le=10_000, description="Checkpoints kept; older ones are deleted.")
    log_interval: int = Field(
        10, gt=0, le=1000000000, description="Steps between log lines on stdout (metrics.jsonl gets every step)."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the initial weights and the data sampler.")
    device: str = Field("auto", description="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:N', 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Compute dtype: bfloat16 = autocast (matmuls in bf16; weights, optimizer state, RMSNorm, "
        "RoPE, softmax and loss in float32); float32 = everything "
        "in float32; auto = bfloat16 on CUDA, float32 elsewhere.",
    )
    allow_tf32: bool = Field(
        True,
        description="On CUDA, let float32 matmuls and convolutions use TF32 tensor cores "
        "(torch.backends.cuda.matmul.allow_tf32); ignored elsewhere.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model (fullgraph: forward and backward, no graph breaks; "
        "needs a C++ compiler on CPU).",
    )
    compile_backend: Literal["inductor", "aot_eager"] = Field(
        "inductor",
        description="torch.compile backend: inductor (generated kernels) or aot_eager (traces forward and "
        "backward, runs them without code generation: a quick check that the model compiles).",
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each Transformer block's activations in backward instead of storing them: "
        "less memory for about a third more compute.",
    )
    resume: bool = Field(True, description="Resume from the newest checkpoint in out_dir when there is one.")
    allow_changed: bool = Field(
        False,
        description="Resume even when settings that change the computation differ from "
        "the checkpoint's (they are listed and recorded in meta.json).",
    )
    peak_flops: float | None = Field(
        None,
        gt=0,
        description="Device peak FLOP/s for MFU (default: looked up for known GPUs; "
        "none on CPU, where MFU is not reported).",
    )
    strategy: str = Field(
        "none", description="Parallelism: 'none' (one device) or ddp, ddp_bucketed, zero1, fsdp (torchrun)."
    )
    bucket_size_mb: float = Field(
        25.0, gt=0, description="Gradient bucket size (MB) of strategies ddp_bucketed and zero1."
    )

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; choose one of {sorted(STRATEGIES)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("give max_steps or max_tokens (how long to train)")
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is above lr={self.lr}")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.model.context_length

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.max_tokens / self.tokens_per_step))


def resolve_vocab_size(cfg: TrainConfig, manifest: Manifest | None = None) -> TrainConfig:
    """``cfg`` with ``model.vocab_size`` taken from the token manifest when it is 'auto'.

    An explicit size smaller than the tokenizer's vocabulary is refused here, before any work,
    naming both (a larger one is fine: padding to a multiple of 64 is common)."""
    if manifest is None:
        if not cfg.data:
            raise ValueError("data is not set: give the token-shard directory (its manifest gives the vocabulary size)")
        manifest = read_manifest(cfg.data)
    have = manifest.extra.get("vocab_size")
    where = f"the token shards in {cfg.data or manifest.path} (tokenizer {manifest.extra.get('tokenizer')!r})"
    if cfg.model.vocab_size == "auto":
        if not isinstance(have, int) or have <= 0:
            raise ValueError(
                f"model.vocab_size is 'auto' but {where} record no vocab_size in their manifest; "
                "set model.vocab_size to the tokenizer's vocabulary size"
            )
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": have})})
    if isinstance(have, int) and cfg.model.vocab_size < have:
        raise ValueError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of {where}: "
            f"vocab_size {have}; set model.vocab_size to auto (or to at least {have})"
        )
    return cfg


def flat_settings(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"model.rope_theta": 1e4, "lr": 3e-4, ...}: nested config dicts as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(saved: dict | None, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, this config's value)} for the settings that change what is
    computed (not RUN_SETTINGS, not LENGTH_SETTINGS). Keys a checkpoint predates are skipped."""
    if not saved:
        return {}
    old, new = flat_settings(saved), flat_settings(cfg.model_dump())
    free = RUN_SETTINGS | LENGTH_SETTINGS
    return {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if k not in free and old[k] != new[k]}
