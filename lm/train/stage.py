"""The pretrain stage: token shards in → a training subprocess → a checkpoint stage with its manifest.

Runnable from plain Python (the ``pretrain`` flow runs the same functions as Prefect tasks):

    from lm.train.stage import PretrainConfig, run_pretrain
    manifest = run_pretrain(PretrainConfig.model_validate(yaml.safe_load(open("configs/pretrain-demo.yaml"))))

Reads a token-shard directory (the tokenize stage's ``_manifest.json`` + ``.bin`` shards) or, for
demos without a tokenizer, a text file turned into byte-level tokens (``bytetokens`` stage).
Writes ``<root>/pretrain/<fingerprint>/``::

    run/                 the trainer's out_dir: checkpoints/step-*/, metrics.jsonl, summary.json, train.yaml
    losses.json          final train/val loss, steps, tokens, unigram entropy of the training tokens
    loss_curve.png       train and validation loss, and tokens/s (+ MFU on GPUs), against step
    samples.json         generations from the final checkpoint
    _manifest.json       stage contract + checkpoint, model_config, tokenizer, final losses

Training runs as ``python -m lm.train`` (or ``torchrun … -m lm.train``) in its own process group:
its log streams to ``log``, a timeout kills the whole group, and another attempt resumes from the
newest checkpoint in ``run/``. The fingerprint covers the training config without its run
settings (``lm.train.config.NOT_FINGERPRINTED``), with ``model.vocab_size: auto`` resolved from
the tokens first, so spelling out the tokenizer's size gives the same stage.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from lm.config import Config, StageRef
from lm.data.shards import Stage, atomic_write_json, read_manifest
from lm.data.storage import as_path, check_local_root, check_root
from lm.train.config import NOT_FINGERPRINTED, TrainConfig, resolve_vocab_size
from lm.train.data import TokenShards, byte_tokens, write_token_shards
from lm.train.launch import LaunchConfig, LaunchFailed, LaunchTimeout, run_supervised, torchrun_command
from lm.train.report import checkpoint_files, plot_training, sample_generations, unigram_entropy
from lm.train.trainer import EXIT_DIVERGED

STAGE_VERSION = "1"
REPO = Path(__file__).resolve().parents[2]
Log = Callable[[str], None]


class PretrainConfig(Config):
    """The pretrain flow's form: input tokens, the training run, how to launch it, what to sample."""

    root: str = Field("outputs", description="Artifact root; the stage writes `<root>/pretrain/<fingerprint>/`.")
    tokens: StageRef | None = Field(
        None, description="Token-shard directory from the tokenize stage (holds _manifest.json), or `tokenize@latest`."
    )
    text_file: str | None = Field(
        None, description="Instead of tokens: a text file trained on as bytes (257-token vocab; demo only)."
    )
    val_fraction: float = Field(0.05, gt=0, lt=0.5, description="Share of text_file's bytes held out for validation.")
    train: TrainConfig = Field(description="The training run (data and out_dir are filled in by the flow).")
    launcher: Literal["python", "torchrun"] = Field(
        "python", description="python -m lm.train, or torchrun for several GPUs."
    )
    nproc_per_node: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        1, description="Processes per node when launcher is torchrun: a number, or 'auto' = one per visible GPU."
    )
    nnodes: str = Field(
        "1", description="torchrun nodes: a number or 'MIN:MAX'; above 1 needs rdzv_endpoint (see docs/distributed.md)."
    )
    rdzv_endpoint: str | None = Field(
        None, description="host:port of torchrun's c10d rendezvous for multi-node runs (unset: single node)."
    )
    rdzv_id: str = Field("lmpipe", description="Rendezvous id: the same on every node of one job, unique per job.")
    timeout_s: float = Field(
        6 * 3600, gt=0, description="Kill the training process group after this many seconds (per attempt)."
    )
    retries: int = Field(
        2, ge=0, le=100, description="Attempts after a failure or timeout; each resumes from the last checkpoint."
    )
    sample_prompts: list[str] = Field(
        ["Once upon a time", "The "], max_length=64, description="Prompts for the sample generations."
    )
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
    def _one_input(self) -> PretrainConfig:
        if (self.tokens is None) == (self.text_file is None):
            raise ValueError("give exactly one of tokens (a token-shard directory) or text_file (byte-level demo)")
        if self.train.strategy != "none" and self.launcher != "torchrun":
            raise ValueError(f"train.strategy={self.train.strategy!r} needs launcher='torchrun'")
        if self.launcher == "torchrun":
            self.launch_config().check_batch(self.train.batch_size)
        return self

    def launch_config(self) -> LaunchConfig:
        return LaunchConfig(
            nproc_per_node=self.nproc_per_node,
            nnodes=self.nnodes,
            rdzv_endpoint=self.rdzv_endpoint,
            rdzv_id=self.rdzv_id,
            timeout_s=self.timeout_s,
        )


def byte_tokenize(text_file: str, root: str, val_fraction: float, log: Log = print) -> str:
    """A text file as byte-level token shards (train + val), once per file content; returns the manifest path."""
    path = Path(text_file)
    if not path.exists():
        raise FileNotFoundError(f"text_file {text_file!r} does not exist")
    stage = Stage(root, "bytetokens", version="1", config={"val_fraction": val_fraction}, sources=[str(path)])
    if stage.is_complete():
        return str(stage.manifest_path)
    ids = byte_tokens(path.read_text(encoding="utf-8", errors="replace"))
    cut = int(len(ids) * (1 - val_fraction))
    manifest = write_token_shards(
        stage.path,
        {"train": [ids[:cut]], "val": [ids[cut:]]},
        vocab_size=257,
        eot_id=256,
        tokenizer="bytes",
        stage="bytetokens",
        fingerprint=stage.fingerprint,
    )
    log(f"byte-tokenized {path}: {cut} train, {len(ids) - cut} val tokens -> {manifest.parent}")
    return str(manifest)


def training_config(config: PretrainConfig, tokens_manifest: str) -> TrainConfig:
    """The train section with vocab_size resolved from the tokens (a too-small explicit one fails here)."""
    return resolve_vocab_size(config.train, read_manifest(tokens_manifest))


def pretrain_stage(config: PretrainConfig, tokens_manifest: str) -> Stage:
    train = training_config(config, tokens_manifest)
    train_fp = {k: v for k, v in train.model_dump().items() if k not in NOT_FINGERPRINTED}
    return Stage(config.root, "pretrain", version=STAGE_VERSION, config={"train": train_fp}, inputs=[tokens_manifest])


def _command(config: PretrainConfig, cfg_path: Path) -> list[str]:
    if config.launcher == "torchrun":
        return torchrun_command(config.launch_config(), "lm.train", ["--config", str(cfg_path)])
    return [sys.executable, "-m", "lm.train", "--config", str(cfg_path)]


def run_training(config: PretrainConfig, tokens_manifest: str, run_dir: str, log: Log = print) -> dict:
    """Launch the trainer on ``tokens_manifest`` into ``run_dir``; stream its log; enforce the timeout."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = training_config(config, tokens_manifest).model_copy(
        update={"data": str(as_path(tokens_manifest).parent), "out_dir": str(run), "resume": True}
    )
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
        raise TimeoutError(
            f"training exceeded timeout_s={config.timeout_s}; killed "
            f"(a retry resumes from the last checkpoint in {run})"
        ) from None
    except LaunchFailed as e:
        # A diverged run exits 3 (torchrun reports any failed rank as 1): it is a result, not an error.
        summary = run / "summary.json"
        fresh = summary.exists() and summary.stat().st_mtime >= started
        if not (e.returncode == EXIT_DIVERGED or (fresh and json.loads(summary.read_text())["status"] == "diverged")):
            raise RuntimeError(f"training exited with status {e.returncode}; {e}") from None
    return json.loads((run / "summary.json").read_text())


def diverged_message(summary: dict) -> str:
    return (
        f"training diverged at step {summary.get('diverged_step')} (non-finite loss, gradient or weights); "
        f"last good checkpoint {summary['checkpoint']}. Lower train.lr or raise train.warmup_steps and rerun."
    )


def finalize(config: PretrainConfig, tokens_manifest: str, summary: dict, log: Log = print) -> str:
    """Loss table, loss/throughput plot, samples, then the stage manifest (written last). Returns its path."""
    stage = pretrain_stage(config, tokens_manifest)
    data = read_manifest(tokens_manifest)
    entropy = unigram_entropy(TokenShards(as_path(tokens_manifest).parent, "train"))
    losses = {k: summary[k] for k in ("final_train_loss", "final_val_loss")} | {"unigram_entropy": entropy}
    losses |= {k: summary[k] for k in ("steps", "tokens", "wall_time_s", "num_params")}
    atomic_write_json(stage.path / "losses.json", losses)
    plot_training(Path(summary["metrics"]), stage.path / "loss_curve.png", entropy)
    try:
        samples = sample_generations(
            summary["checkpoint"],
            config.sample_prompts,
            max_new_tokens=config.sample_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
        )
    except (ImportError, AttributeError, FileNotFoundError) as e:  # tokenizer not loadable: keep the stage, say why
        log(f"no sample generations: {e}")
        samples = []
    atomic_write_json(stage.path / "samples.json", samples)
    extra = {
        "checkpoint": summary["checkpoint"],
        "model_config": summary["model_config"],
        "tokenizer": data.extra.get("tokenizer"),
        "eot_id": data.extra.get("eot_id"),
        "final_train_loss": summary["final_train_loss"],
        "final_val_loss": summary["final_val_loss"],
        "unigram_entropy": entropy,
        "metrics": summary["metrics"],
        # the final checkpoint's files: Stage.is_complete checks them, so a damaged one retrains
        "files_sha256": checkpoint_files(stage.path, summary["checkpoint"]),
        "counts": {
            "in": summary["tokens"],
            "kept": summary["tokens"],
            "rejected": {},
            "failed": {},
            "steps": summary["steps"],
            "tokens_trained": summary["tokens"],
        },
    }
    return str(stage.commit(extra=extra))


def run_pretrain(config: PretrainConfig, log: Log = print) -> str:
    """The whole stage without Prefect: tokens, training (``retries`` more attempts, each resuming),
    finalize. Returns the stage's manifest path; a finished stage is not trained again."""
    tokens = config.tokens or byte_tokenize(config.text_file, config.root, config.val_fraction, log)
    tokens_manifest = read_manifest(tokens)["_path"]
    stage = pretrain_stage(config, tokens_manifest)
    if stage.is_complete():
        log(f"pretrain stage {stage.path} is complete; skipping")
        return str(stage.manifest_path)
    for attempt in range(config.retries + 1):
        try:
            summary = run_training(config, tokens_manifest, str(stage.path / "run"), log)
            break
        except (TimeoutError, RuntimeError) as e:
            if attempt == config.retries:
                raise
            log(f"attempt {attempt + 1} failed ({e}); resuming from the last checkpoint")
    if summary["status"] == "diverged":
        raise RuntimeError(diverged_message(summary))
    return finalize(config, tokens_manifest, summary, log)
