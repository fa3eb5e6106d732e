"""An IsoFLOP sweep's plan: its config, the corpus it reads, and budget × model size → one run each.

Each planned run is identified by a fingerprint of (its training config, the corpus); the run
itself, its cache and the stage that fits the laws are in lm.scaling.stage.

``budgets: auto`` chooses the budgets from the corpus and the grid (``auto_budgets``): centred
where a Chinchilla-like 20 tokens per parameter puts the optimum of the grid's middle model, as
wide as the grid's range of sizes allows, and capped so that the middle model reads at most
``max_epochs`` passes over the training tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from lm.config import Config, StageRef
from lm.data.shards import file_sha256, fingerprint, read_manifest
from lm.data.storage import check_local_root, check_root
from lm.scaling.flops import (
    ModelShape,
    flops_per_token,
    non_embedding_params,
    num_params,
    shape_for_params,
)

RUN_STAGE = "scaling-runs"
RUN_VERSION = "1"
TOKENS_PER_PARAM = 20  # Chinchilla's compute-optimal ratio: where auto budgets are centred


class ShapeSpec(Config):
    """One explicit model shape of the grid."""

    d_model: int = Field(gt=0, le=1 << 16, description="Width of the residual stream.")
    num_layers: int = Field(gt=0, le=1024, description="Number of Transformer blocks.")
    num_heads: int = Field(gt=0, le=1024, description="Attention heads; must divide d_model.")
    d_ff: int = Field(gt=0, le=1 << 20, description="SwiGLU hidden width.")


class ScalingConfig(Config):
    """An IsoFLOP sweep and the scaling-law fits on its results (the `scaling` flow's form)."""

    corpus: StageRef | None = Field(
        None,
        description=(
            "Token-shard directory (with _manifest.json) from the tokenize "
            "stage, or `tokenize@latest`; needs train and val shards."
        ),
    )
    text: str | None = Field(
        None,
        description=(
            "Instead of corpus: a UTF-8 text file, byte-tokenized (vocab "
            "257, 10% val) into `<root>/scaling-bytes/<fp>/` (for demos)."
        ),
    )
    root: str = Field(
        "outputs",
        description="Output root: runs go to `<root>/scaling-runs/<fp>/`, the fits to `<root>/scaling/<fp>/`.",
    )
    budgets: Annotated[list[float], Field(max_length=64)] | Literal["auto"] = Field(
        description="Compute budgets in training FLOPs; each model size is trained to spend each budget. "
        "'auto': num_budgets budgets chosen from the corpus size and the grid (see docs/scaling.md)."
    )
    num_budgets: int = Field(3, ge=2, le=64, description="budgets='auto': how many budgets (log-spaced).")
    max_epochs: float = Field(
        4.0,
        gt=0,
        description=(
            "budgets='auto': the grid's middle model reads at most this "
            "many passes over the training tokens at the largest budget."
        ),
    )
    model_sizes: list[Annotated[int, Field(le=10**13)]] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Target non-embedding parameter counts N; each is mapped to "
            "a shape of the family (lm.scaling.flops.shape_for_params)."
        ),
    )
    shapes: list[ShapeSpec] = Field(
        default_factory=list,
        max_length=64,
        description="Explicit model shapes, in addition to (or instead of) model_sizes.",
    )
    aspect_ratio: float = Field(32.0, gt=0, description="Target d_model / num_layers of the shape family.")
    context_length: int = Field(64, gt=0, le=1 << 20, description="Tokens per training sequence.")
    batch_size: int = Field(8, gt=0, le=1 << 16, description="Sequences per optimizer step.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate at lr_reference_width.")
    lr_rule: Literal["constant", "inverse_width"] = Field(
        "inverse_width",
        description=(
            "constant: every run uses lr; inverse_width: lr · lr_reference_width "
            "/ d_model (wider models take smaller steps, as in μP for Adam)."
        ),
    )
    lr_reference_width: int = Field(
        64, gt=0, le=1 << 20, description="The d_model at which lr applies unchanged (inverse_width rule)."
    )
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of each run's steps spent in linear warmup.")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final learning rate of the cosine as a fraction of the peak."
    )
    min_steps: int = Field(
        10, gt=0, le=1000000000, description="Runs whose budget buys fewer optimizer steps are skipped (with a note)."
    )
    eval_batches: int = Field(8, gt=0, le=1_000_000, description="Validation batches for each run's final val loss.")
    fit_on: Literal["val", "train"] = Field("val", description="Which final loss the fits use.")
    target_budget: float = Field(
        gt=0, description="The compute budget (FLOPs) to recommend a model size and token count for."
    )
    num_bootstrap: int = Field(
        200, ge=0, le=100_000, description="Bootstrap replicates for the intervals (both approaches)."
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Coverage of the reported intervals.")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="Seed of every run (weights and data order) and of the bootstrap."
    )
    device: str = Field("auto", description="Training device: auto (cuda if present), cpu, cuda, cuda:N.")
    cpu_threads: int = Field(
        1, gt=0, le=1024, description="torch threads for CPU runs (1 is fastest for tiny models on a shared machine)."
    )
    max_parallel_runs: int = Field(
        1, gt=0, le=1024, description="Training runs in flight at once (1 per GPU; on CPU, per spare core)."
    )

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "scaling")  # URL roots: see docs/storage.md

    @field_validator("corpus")
    @classmethod
    def _corpus_url(cls, v: str | None) -> str | None:
        return v if v is None or "://" not in v else check_root(v, "corpus")  # read via the local cache

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[float] | str) -> list[float] | str:
        if v == "auto":
            return v
        bad = [b for b in v if not (math.isfinite(b) and b > 0)]
        if bad:
            raise ValueError(f"budgets must be positive FLOP counts, got {bad}")
        if len(set(v)) < 2:
            raise ValueError(f"give ≥ 2 distinct budgets for a power-law fit, got {v}")
        return sorted(set(v))

    @field_validator("model_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        bad = [n for n in v if n <= 0]
        if bad:
            raise ValueError(f"model_sizes must be positive parameter counts, got {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _grid(self) -> ScalingConfig:
        if (self.corpus is None) == (self.text is None):
            raise ValueError(
                "give exactly one of corpus (a token-shard directory) and text (a text file to byte-tokenize)"
            )
        if len(self.model_sizes) + len(self.shapes) < 3:
            raise ValueError("model_sizes + shapes must give ≥ 3 models per budget (a parabola needs 3 points)")
        return self


def byte_corpus(text_path: str | Path, root: str | Path, val_fraction: float = 0.1) -> Path:
    """Byte-level token shards of a text file (ids 0-255, <|endoftext|> = 256), made once."""
    from lm.train.data import byte_tokens, write_token_shards

    path = Path(text_path)
    if not path.is_file():
        raise FileNotFoundError(f"text file {text_path} does not exist (config field 'text')")
    fp = fingerprint("scaling-bytes", "1", {"val_fraction": val_fraction}, [file_sha256(path)])
    out = Path(root) / "scaling-bytes" / fp
    if not (out / "_manifest.json").exists():
        ids = byte_tokens(path.read_text(encoding="utf-8", errors="replace"))
        cut = int(len(ids) * (1 - val_fraction))
        write_token_shards(
            out,
            {"train": [ids[:cut]], "val": [ids[cut:]]},
            vocab_size=257,
            eot_id=256,
            tokenizer="bytes",
            stage="scaling-bytes",
            fingerprint=fp,
        )
    return out


def corpus_info(corpus: str | Path) -> dict:
    """Vocab size and identity of a token-shard directory; FileNotFoundError/ValueError if unusable."""
    m = read_manifest(corpus)
    splits = {s.split or "train" for s in m.shards}
    if not {"train", "val"} <= splits:
        raise ValueError(f"corpus {corpus}: needs 'train' and 'val' shards for the fits, has splits {sorted(splits)}")
    if not m.extra.get("vocab_size"):
        raise ValueError(f"corpus {corpus}: its manifest has no vocab_size")
    path = m.path  # a remote corpus is memory-mapped from the local cache by TokenShards
    return {
        "dir": str(path.parent),
        "manifest": str(path),
        "vocab_size": int(m.extra["vocab_size"]),
        "tokens": {sp: sum(s.num_tokens for s in m.shards if (s.split or "train") == sp) for sp in ("train", "val")},
        # the stage fingerprint alone is not enough: hand-written corpora all say "manual";
        # the digest is of the content, not the signed file (its key is per root)
        "fingerprint": f"{m.fingerprint}:{m.content_digest()[:16]}",
    }


def grid_shapes(cfg: ScalingConfig) -> list[tuple[int | None, ModelShape]]:
    """(target N or None, shape) for every model of the grid, deduplicated, smallest first."""
    seen, out = set(), []
    for target in cfg.model_sizes:
        shape = shape_for_params(target, aspect_ratio=cfg.aspect_ratio)
        if shape not in seen:
            seen.add(shape)
            out.append((target, shape))
    for s in cfg.shapes:
        shape = ModelShape(**s.model_dump())
        if shape not in seen:
            seen.add(shape)
            out.append((None, shape))
    return sorted(out, key=lambda t: non_embedding_params(t[1]))


def learning_rate(cfg: ScalingConfig, shape: ModelShape) -> float:
    if cfg.lr_rule == "inverse_width":
        return cfg.lr * cfg.lr_reference_width / shape.d_model
    return cfg.lr


def plan_runs(cfg: ScalingConfig, corpus: dict) -> tuple[list[dict], list[str]]:
    """Every (budget, shape) run of the sweep, and notes on the ones skipped (budgets resolved first)."""
    if cfg.budgets == "auto":
        raise ValueError("budgets='auto' must be resolved against the corpus first (lm.scaling.sweep.resolve_budgets)")
    vocab, ctx, tokens_per_step = corpus["vocab_size"], cfg.context_length, cfg.batch_size * cfg.context_length
    runs, notes = [], []
    for budget in cfg.budgets:
        for target, shape in grid_shapes(cfg):
            fpt = flops_per_token(shape, ctx, vocab)
            steps = int(budget // (fpt * tokens_per_step))
            if steps < cfg.min_steps:
                notes.append(
                    f"skipped budget {budget:.3g} × N={non_embedding_params(shape):,} "
                    f"({shape.d_model}×{shape.num_layers}): "
                    f"{steps} step(s) < min_steps={cfg.min_steps}"
                )
                continue
            tokens = steps * tokens_per_step
            lr = learning_rate(cfg, shape)
            train = {
                "model": {**shape.to_dict(), "vocab_size": vocab, "context_length": ctx},
                "batch_size": cfg.batch_size,
                "max_steps": steps,
                "lr": lr,
                "min_lr": lr * cfg.min_lr_ratio,
                "warmup_steps": int(cfg.warmup_fraction * steps),
                "eval_batches": cfg.eval_batches,
                "seed": cfg.seed,
            }
            runs.append(
                {
                    "run_id": fingerprint(RUN_STAGE, RUN_VERSION, train, [corpus["fingerprint"]]),
                    "budget": float(budget),
                    "target_params": target,
                    **shape.to_dict(),
                    "params": non_embedding_params(shape),
                    "total_params": num_params(shape, vocab),
                    "tokens": tokens,
                    "compute": float(tokens * fpt),
                    "steps": steps,
                    "lr": lr,
                    "train": train,
                }
            )
    return runs, notes


def auto_budgets(cfg: ScalingConfig, corpus: dict) -> tuple[list[float], list[str]]:
    """``cfg.num_budgets`` log-spaced budgets for this grid on this corpus, and notes saying how.

    Centre: the budget at which the grid's middle model (by N) reads TOKENS_PER_PARAM tokens
    per parameter, so that a Chinchilla-like optimum falls inside the grid. Width: a factor
    √(N_max/N_min) either side (the optimum moves as √C, so it stays well inside the grid), cut
    below where the largest model would get fewer than min_steps steps, and above where the
    middle model would read more than max_epochs passes over the training tokens. When that cap
    leaves less than a factor 2, the window reaches down to (N_max/N_min)× below the centre
    (where the optimum nears the smallest model); when even that is too narrow the corpus is too
    small for the grid, and a note says so plainly. The fits then say whether the runs
    bracketed a minimum.
    """
    shapes = [s for _, s in grid_shapes(cfg)]
    vocab, ctx = corpus["vocab_size"], cfg.context_length
    ns = [non_embedding_params(s) for s in shapes]
    mid = min(shapes, key=lambda s: abs(math.log(non_embedding_params(s)) - (math.log(ns[0]) + math.log(ns[-1])) / 2))
    fpt_mid, n_mid = flops_per_token(mid, ctx, vocab), non_embedding_params(mid)
    centre = fpt_mid * TOKENS_PER_PARAM * n_mid
    spread = math.sqrt(ns[-1] / ns[0])
    floor = cfg.min_steps * cfg.batch_size * ctx * flops_per_token(shapes[-1], ctx, vocab) * 1.001
    train_tokens = corpus["tokens"]["train"]
    cap = fpt_mid * cfg.max_epochs * train_tokens
    lo, hi = max(centre / spread, floor), min(centre * spread, cap)
    notes = [
        (
            f"budgets chosen from the corpus ({train_tokens:,} training tokens) "
            f"and the grid (N {ns[0]:,}…{ns[-1]:,}): "
            f"centred on {centre:.3g} FLOPs, "
            f"where the middle model (N={n_mid:,}) reads {TOKENS_PER_PARAM} tokens per parameter"
        )
    ]
    if cap < centre * spread:
        notes.append(
            f"the corpus caps the largest budget at {cap:.3g} FLOPs "
            f"(the middle model reads max_epochs={cfg.max_epochs:g} "
            "passes over the training tokens)"
        )
    if hi < lo * 2:  # the corpus caps the top budget: reach down to where the optimum nears the smallest model
        lo = max(centre / spread**2, floor)
        notes.append("the window reaches down, where the optimum moves towards the smallest models")
    if hi < lo * 2:
        hi = lo * 4
        notes.append(
            f"the corpus is small for this grid: at {hi:.3g} FLOPs the middle model reads "
            f"{hi / fpt_mid / train_tokens:.1f} passes over the training tokens (max_epochs={cfg.max_epochs:g}); "
            "expect overfitting and no bracketed minimum: use more text or smaller models"
        )
    budgets = [float(f"{b:.3g}") for b in np.geomspace(lo, hi, cfg.num_budgets)]
    return budgets, notes


def resolve_budgets(cfg: ScalingConfig, corpus: dict) -> tuple[ScalingConfig, list[str]]:
    """The config with its budgets as numbers (``auto`` chosen from the corpus), and notes on the choice."""
    if cfg.budgets != "auto":
        return cfg, []
    budgets, notes = auto_budgets(cfg, corpus)
    return cfg.model_copy(update={"budgets": budgets}), notes
