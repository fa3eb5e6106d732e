"""Pretraining tasks: (byte-)tokens in → a training subprocess → a checkpoint stage with its manifest.

Reads a token-shard directory (the tokenize stage's ``_manifest.json`` + ``.bin`` shards) or, for
demos without a tokenizer, a text file turned into byte-level tokens (``bytetokens`` stage).
Writes ``<root>/pretrain/<fingerprint>/``::

    run/                 the trainer's out_dir: checkpoints/step-*/, metrics.jsonl, summary.json, train.yaml
    losses.json          final train/val loss, steps, tokens, unigram entropy of the training tokens
    loss_curve.png       train and validation loss against step
    samples.json         generations from the final checkpoint
    _manifest.json       stage contract + checkpoint, model_config, tokenizer, final losses

Training runs as ``python -m lm.train`` (or ``torchrun … -m lm.train``) in its own process group:
its log streams to the Prefect logger, a timeout kills the whole group, and a retry resumes from
the newest checkpoint in ``run/``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from prefect import get_run_logger, task
from pydantic import Field, field_validator, model_validator

from lm.config import Config, StageRef
from lm.data.shards import Stage, atomic_write_json, file_sha256, read_manifest
from lm.data.storage import as_path, check_local_root, check_root
from lm.train.data import TokenShards, byte_tokens, write_token_shards
from lm.train.launch import LaunchConfig, LaunchFailed, LaunchTimeout, run_supervised, torchrun_command
from lm.train.trainer import EXIT_DIVERGED, TrainConfig
from tasks.progress import Progress, tail_metrics

STAGE_VERSION = "1"
REPO = Path(__file__).resolve().parents[1]
# Fields that change how a run executes, not what it computes: left out of the fingerprint.
_NOT_FINGERPRINTED = {"data", "out_dir", "device", "compile", "log_interval", "resume", "max_seconds"}


class PretrainConfig(Config):
    """The pretrain flow's form: input tokens, the training run, how to launch it, what to sample."""

    root: str = Field("outputs", description="Artifact root; the stage writes `<root>/pretrain/<fingerprint>/`.")
    tokens: StageRef | None = Field(None, description="Token-shard directory from the tokenize stage (holds _manifest.json), or `tokenize@latest`.")
    text_file: str | None = Field(None, description="Instead of tokens: a text file trained on as bytes (257-token vocab; demo only).")
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="Share of text_file's bytes held out for validation.")
    train: TrainConfig = Field(description="The training run (data and out_dir are filled in by the flow).")
    launcher: Literal["python", "torchrun"] = Field("python", description="python -m lm.train, or torchrun for several GPUs.")
    nproc_per_node: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(1, description="Processes per node when launcher is torchrun: a number, or 'auto' = one per visible GPU.")
    nnodes: str = Field("1", description="torchrun nodes: a number or 'MIN:MAX'; above 1 needs rdzv_endpoint (see docs/dist.md).")
    rdzv_endpoint: str | None = Field(None, description="host:port of torchrun's c10d rendezvous for multi-node runs (unset: single node).")
    rdzv_id: str = Field("lmpipe", description="Rendezvous id: the same on every node of one job, unique per job.")
    timeout_s: float = Field(6 * 3600, gt=0, description="Kill the training process group after this many seconds (per attempt).")
    retries: int = Field(2, ge=0, le=100, description="Attempts after a failure or timeout; each resumes from the last checkpoint.")
    sample_prompts: list[str] = Field(["Once upon a time", "The "], max_length=64, description="Prompts for the sample generations.")
    sample_tokens: int = Field(80, gt=0, le=1 << 16, description="Tokens generated per prompt.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature of the sample generations (0 = greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus mass of the sample generations.")

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "pretrain")  # the checkpoints stay local; tokens may be remote

    @field_validator("tokens")
    @classmethod
    def _tokens_url(cls, v: str | None) -> str | None:
        return v if v is None or "://" not in v else check_root(v, "tokens")  # read via the local cache

    @model_validator(mode="after")
    def _one_input(self) -> "PretrainConfig":
        if (self.tokens is None) == (self.text_file is None):
            raise ValueError("give exactly one of tokens (a token-shard directory) or text_file (byte-level demo)")
        if self.train.strategy != "none" and self.launcher != "torchrun":
            raise ValueError(f"train.strategy={self.train.strategy!r} needs launcher='torchrun'")
        if self.launcher == "torchrun":
            self.launch_config().check_batch(self.train.batch_size)
        return self

    def launch_config(self) -> LaunchConfig:
        return LaunchConfig(nproc_per_node=self.nproc_per_node, nnodes=self.nnodes, rdzv_endpoint=self.rdzv_endpoint,
                            rdzv_id=self.rdzv_id, timeout_s=self.timeout_s)


@task(name="byte-tokenize")
def byte_tokenize_task(text_file: str, root: str, val_fraction: float) -> str:
    """A text file as byte-level token shards (train + val), once per file content; returns the manifest path."""
    path = Path(text_file)
    if not path.exists():
        raise FileNotFoundError(f"text_file {text_file!r} does not exist")
    stage = Stage(root, "bytetokens", version="1", config={"val_fraction": val_fraction}, sources=[str(path)])
    if stage.is_complete():
        return str(stage.manifest_path)
    ids = byte_tokens(path.read_text(encoding="utf-8", errors="replace"))
    cut = int(len(ids) * (1 - val_fraction))
    manifest = write_token_shards(stage.path, {"train": [ids[:cut]], "val": [ids[cut:]]}, vocab_size=257, eot_id=256,
                                  tokenizer="bytes", stage="bytetokens", fingerprint=stage.fingerprint)
    get_run_logger().info("byte-tokenized %s: %d train, %d val tokens -> %s", path, cut, len(ids) - cut, manifest.parent)
    return str(manifest)


def pretrain_stage(config: PretrainConfig, tokens_manifest: str) -> Stage:
    train_fp = {k: v for k, v in config.train.model_dump().items() if k not in _NOT_FINGERPRINTED}
    return Stage(config.root, "pretrain", version=STAGE_VERSION, config={"train": train_fp}, inputs=[tokens_manifest])


def _command(config: PretrainConfig, cfg_path: Path) -> list[str]:
    if config.launcher == "torchrun":
        return torchrun_command(config.launch_config(), "lm.train", ["--config", str(cfg_path)])
    return [sys.executable, "-m", "lm.train", "--config", str(cfg_path)]


def run_training(config: PretrainConfig, tokens_manifest: str, run_dir: str, log=print) -> dict:
    """Launch the trainer on ``tokens_manifest`` into ``run_dir``; stream its log; enforce the timeout."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = config.train.model_copy(update={"data": str(as_path(tokens_manifest).parent), "out_dir": str(run), "resume": True})
    cfg_path = run / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = _command(config, cfg_path)
    log(f"launching: {' '.join(cmd)}")
    started = time.time()
    try:
        # Every process of the tree (torchrun puts each rank in a session of its own) is
        # stopped on timeout, error or cancellation.
        run_supervised(cmd, on_line=log, timeout_s=config.timeout_s, env=env, cwd=str(REPO))
    except LaunchTimeout:
        raise TimeoutError(f"training exceeded timeout_s={config.timeout_s}; killed (a retry resumes from the last checkpoint in {run})") from None
    except LaunchFailed as e:
        # A diverged run exits 3 (torchrun reports any failed rank as 1): it is a result, not an error.
        summary = run / "summary.json"
        fresh = summary.exists() and summary.stat().st_mtime >= started
        if not (e.returncode == EXIT_DIVERGED or (fresh and json.loads(summary.read_text())["status"] == "diverged")):
            raise RuntimeError(f"training exited with status {e.returncode}; {e}") from None
    return json.loads((run / "summary.json").read_text())


@task(name="pretrain-train")
def train_task(config: PretrainConfig, tokens_manifest: str, run_dir: str) -> dict:
    """One training attempt (retries are set by the flow from config.retries)."""
    logger = get_run_logger()
    started = time.time()
    progress = Progress("pretrain", config.train.max_steps)  # live metrics from the trainer's metrics.jsonl
    with progress, tail_metrics(Path(run_dir) / "metrics.jsonl", progress):
        summary = run_training(config, tokens_manifest, run_dir, log=logger.info)
    progress.finish("Pretraining", note=f"status {summary['status']}")
    logger.info("training %s after %.0f s: %s", summary["status"], time.time() - started, {k: summary[k] for k in ("steps", "final_train_loss", "final_val_loss")})
    return summary


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


def plot_losses(metrics_path: Path, png: Path, entropy: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    ev = [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot(*zip(*tr), label="train loss", lw=1)
    if ev:
        ax.plot(*zip(*ev), "o-", label="validation loss")
    if entropy is not None:
        ax.axhline(entropy, ls="--", c="gray", label=f"unigram entropy {entropy:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def sample_generations(checkpoint: str, config: PretrainConfig) -> list[dict]:
    import torch

    from lm.model import load_model
    from lm.model.generate import checkpoint_tokenizer, generate_text, load_tokenizer

    model = load_model(checkpoint)
    tok_dir, eot_id = checkpoint_tokenizer(checkpoint)
    tokenizer = load_tokenizer(tok_dir)
    out = []
    for i, prompt in enumerate(config.sample_prompts):
        g = torch.Generator().manual_seed(i)
        text = generate_text(model, tokenizer, prompt, eot_id=eot_id, max_new_tokens=config.sample_tokens,
                             temperature=config.temperature, top_p=config.top_p, generator=g)
        out.append({"prompt": prompt, "completion": text})
    return out


def _checkpoint_files(stage_dir: Path, checkpoint: str | None) -> dict[str, str]:
    """{path relative to the stage directory: sha256} of a checkpoint inside it."""
    if not checkpoint or not Path(checkpoint).resolve().is_relative_to(Path(stage_dir).resolve()):
        return {}
    ck = Path(checkpoint).resolve()
    rel = ck.relative_to(Path(stage_dir).resolve())
    return {str(rel / f.name): file_sha256(f) for f in sorted(ck.iterdir()) if f.is_file()}


@task(name="pretrain-finalize")
def finalize_task(config: PretrainConfig, tokens_manifest: str, summary: dict) -> str:
    """Loss table, loss curve, samples, then the stage manifest (written last). Returns its path."""
    stage = pretrain_stage(config, tokens_manifest)
    data = read_manifest(tokens_manifest)
    entropy = unigram_entropy(TokenShards(as_path(tokens_manifest).parent, "train"))
    losses = {
        "final_train_loss": summary["final_train_loss"],
        "final_val_loss": summary["final_val_loss"],
        "unigram_entropy": entropy,
        "steps": summary["steps"],
        "tokens": summary["tokens"],
        "wall_time_s": summary["wall_time_s"],
        "num_params": summary["num_params"],
    }
    atomic_write_json(stage.path / "losses.json", losses)
    plot_losses(Path(summary["metrics"]), stage.path / "loss_curve.png", entropy)
    try:
        samples = sample_generations(summary["checkpoint"], config)
    except (ImportError, AttributeError, FileNotFoundError) as e:  # tokenizer not loadable: keep the stage, say why
        get_run_logger().warning("no sample generations: %s", e)
        samples = []
    atomic_write_json(stage.path / "samples.json", samples)
    extra = {
        "checkpoint": summary["checkpoint"],
        "model_config": summary["model_config"],
        "tokenizer": data.get("tokenizer"),
        "eot_id": data.get("eot_id"),
        "final_train_loss": summary["final_train_loss"],
        "final_val_loss": summary["final_val_loss"],
        "unigram_entropy": entropy,
        "metrics": summary["metrics"],
        # the final checkpoint's files: Stage.is_complete checks them, so a damaged one retrains
        "files_sha256": _checkpoint_files(stage.path, summary["checkpoint"]),
        "counts": {"in": summary["tokens"], "kept": summary["tokens"], "rejected": {}, "failed": {},
                   "steps": summary["steps"], "tokens_trained": summary["tokens"]},
    }
    return str(stage.commit(extra=extra))
