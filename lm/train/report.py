"""What the pretrain stage shows of a finished run: unigram entropy, the loss/throughput plot, samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lm.data.shards import file_sha256
from lm.model import load_model
from lm.model.generate import checkpoint_tokenizer, generate_text
from lm.tokenizer.load import load_tokenizer
from lm.train.data import TokenShards
from lm.train.metrics import read_metrics


def unigram_entropy(shards: TokenShards, limit: int = 50_000_000) -> float:
    """Entropy (nats/token) of the token frequencies of (up to ``limit`` tokens of) the shards."""
    counts = np.zeros(0, dtype=np.int64)
    seen = 0
    for arr in shards.arrays:
        chunk = np.asarray(arr[: max(0, limit - seen)], dtype=np.int64)
        seen += len(chunk)
        c = np.bincount(chunk)
        counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
        counts[: len(c)] += c
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def plot_training(metrics_path: Path, png: Path, entropy: float | None) -> None:
    """Two panels: train/validation loss (with the unigram entropy), and tokens/s (with MFU when known)."""
    import matplotlib  # plotting only here: importing lm.train must not need a display backend

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("kind") == "train"]
    ev = [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval"]
    fig, (ax, tp) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if ev:
        ax.plot(*zip(*ev), "o-", label="validation loss")
    if entropy is not None:
        ax.axhline(entropy, ls="--", c="gray", label=f"unigram entropy {entropy:.2f}")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="loss")
    ax.legend()
    ax.grid(alpha=0.3)
    speed = [(r["step"], r["tokens_per_s"]) for r in train if r.get("tokens_per_s") is not None]
    if speed:
        tp.plot(*zip(*speed), lw=1, c="tab:green", label="tokens/s")
    tp.set(xlabel="step", ylabel="tokens/s (all ranks)", title="throughput")
    tp.grid(alpha=0.3)
    mfu = [(r["step"], 100 * r["mfu"]) for r in train if r.get("mfu") is not None]
    if mfu:
        twin = tp.twinx()
        twin.plot(*zip(*mfu), lw=1, c="tab:purple", label="MFU")
        twin.set_ylabel("MFU (%)")
    else:
        tp.text(
            0.02, 0.02, "MFU: not reported (no peak FLOP/s known for this device)", transform=tp.transAxes, fontsize=8
        )
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def sample_generations(
    checkpoint: str, prompts: list[str], *, max_new_tokens: int, temperature: float, top_p: float
) -> list[dict]:
    """One seeded continuation per prompt from the checkpoint, decoded with the tokenizer it records."""
    model = load_model(checkpoint)
    tok_dir, eot_id = checkpoint_tokenizer(checkpoint)
    tokenizer = load_tokenizer(tok_dir)
    out = []
    for i, prompt in enumerate(prompts):
        g = torch.Generator().manual_seed(i)
        text = generate_text(
            model,
            tokenizer,
            prompt,
            eot_id=eot_id,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            generator=g,
        )
        out.append({"prompt": prompt, "completion": text})
    return out


def checkpoint_files(stage_dir: Path, checkpoint: str | None) -> dict[str, str]:
    """{path relative to the stage directory: sha256} of a checkpoint inside it."""
    if not checkpoint or not Path(checkpoint).resolve().is_relative_to(Path(stage_dir).resolve()):
        return {}
    ck = Path(checkpoint).resolve()
    rel = ck.relative_to(Path(stage_dir).resolve())
    return {str(rel / f.name): file_sha256(f) for f in sorted(ck.iterdir()) if f.is_file()}
