"""Corruption of finished artifacts: flipped bytes and truncation, for every kind the pipeline
writes — Parquet shards, ``_manifest.json``, ``part-N.done.json`` markers, token shards, the
tokenizer's vocab/merges files, and checkpoints (safetensors + meta.json).

Survived means: the damage is detected when the artifact is read (checksum), with an error
that names the file and says to rerun the stage; a rerun of the stage recomputes what is
damaged; and the recomputed output equals the original (byte for byte for data files; for
manifests and markers, equal except their timings).

One chain on real data, built once: the data flow's extract stage on two Common Crawl WARCs
→ tokenizer stage → tokenize stage → a tiny model trained on those token shards.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from flows.data import DataConfig, data_flow
from lm.data.shards import ShardCorruptError, read_manifest, read_marker, read_stage_table
from lm.model.transformer import TransformerLM
from lm.tokenizer.stages import (
    commit_tokenize,
    load_stage_tokenizer,
    tokenize_shard,
    tokenize_stage,
    train_tokenizer_stage,
)
from lm.tokenizer.tokenizer import Tokenizer
from lm.train.checkpoint import CheckpointCorruptError, load_checkpoint
from lm.train.data import TokenShards
from lm.train.optim import AdamW
from lm.train.trainer import TrainConfig, train

# when a file was written, and its self-checksum (which covers the time); a checkpoint's
# "rng" holds the process-global Python RNG, which other threads of this test process (Prefect's
# client) also draw from: training does not use it, and the weights are compared byte for byte
VOLATILE = {
    "timings",
    "manifest_sha256",
    "marker_sha256",
    "meta_sha256",
    "_path",
    "seconds",
    "finished_at",
    "saved_at",
    "rng",
    "manifest_hmac",
    "marker_hmac",
}  # signatures: each root has its own key


def damage(path: Path, mode: str, rng: random.Random) -> None:
    raw = bytearray(path.read_bytes())
    if mode == "flip":
        raw[rng.randrange(len(raw))] ^= 0xFF
    else:
        del raw[rng.randrange(len(raw)) :]
    path.write_bytes(bytes(raw))


def _stable(obj):
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE and not k.endswith("_seconds")}
    return [_stable(v) for v in obj] if isinstance(obj, list) else obj


def stable_json(path: Path) -> dict:
    """A manifest or marker without the fields that record when (and how fast) it was written."""
    return _stable(json.loads(path.read_text()))


def snapshot(d: Path) -> dict[str, object]:
    """Every file of a stage directory: data files by bytes, JSON by stable content."""
    out: dict[str, object] = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            rel = str(p.relative_to(d))
            out[rel] = (
                stable_json(p)
                if p.suffix == ".json" and p.name not in ("vocab.json", "tokenizer.json")
                else p.read_bytes()
            )
    return out


class Chain:
    """The chain's stages, each rerunnable the way its flow runs it."""

    def __init__(self, root: Path, reference: Path):
        self.root = root
        cc = reference / "commoncrawl"
        self.data_cfg = DataConfig(
            sources=[str(cc / "warcfile.warc.gz"), str(cc / "whirlwind.warc.gz")],
            root=str(root),
            max_workers=2,
            filters=None,
        )

    def extract(self) -> Path:
        self.corpus = Path(data_flow(config=self.data_cfg)["extract"])
        return self.corpus

    def tokenizer(self) -> Path:
        # later stages read the extract manifest the first run returned (no flow run each time)
        return Path(
            train_tokenizer_stage(
                self.root,
                self.corpus,
                vocab_size=300,
                special_tokens=["<|endoftext|>"],
                sample_bytes=200_000,
                num_workers=1,
            )
        ).parent

    def tokenize(self) -> Path:
        corpus, tdir = self.corpus, self.tokenizer()
        stage = tokenize_stage(self.root, corpus, tdir, val_fraction=0.1, text_field="text")
        if not stage.is_complete():
            tok = load_stage_tokenizer(tdir)
            n = len(read_manifest(corpus)["shards"])
            for i in range(n):
                tokenize_shard(stage, corpus, tok, i, val_fraction=0.1, text_field="text", num_threads=1)
            commit_tokenize(stage, n, tdir, tok)
        return stage.path

    def train_cfg(self) -> TrainConfig:
        model = dict(vocab_size=300, context_length=16, d_model=16, num_layers=1, num_heads=2, d_ff=48)
        return TrainConfig.model_validate(
            dict(
                model=model,
                data=str(self.tokenize()),
                out_dir=str(self.root / "run"),
                batch_size=4,
                max_steps=12,
                lr=3e-3,
                warmup_steps=2,
                eval_interval=12,
                eval_batches=1,
                checkpoint_interval=4,
                keep_last=3,
                log_interval=12,
                device="cpu",
            )
        )

    def pretrain(self) -> Path:
        return Path(train(self.train_cfg())["checkpoint"])


@pytest.fixture(scope="module")
def chain(prefect_harness, reference, tmp_path_factory):
    c = Chain(tmp_path_factory.mktemp("chain"), reference)
    c.extract()
    c.pretrain()
    return c


def _trial(chain_step, target: Path, read, mode: str, rng: random.Random, whole: Path) -> tuple[bool, str]:
    """Damage ``target``, check ``read()`` fails naming it, rerun the stage, compare ``whole``."""
    before = snapshot(whole)
    damage(target, mode, rng)
    try:
        read()
        return False, f"{mode} of {target.name} was not detected on read"
    except (ShardCorruptError, CheckpointCorruptError) as e:
        msg = str(e)
        if target.name not in msg or "rerun" not in msg.lower():  # names the file, says what to do
            return False, f"unclear error for {target.name}: {msg}"
    chain_step()
    after = snapshot(whole)
    if after != before:
        diff = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return False, f"{mode} of {target.name}: recomputed output differs in {diff}"
    return True, ""


KINDS = ["parquet shard", "stage manifest", "shard marker", "token shard", "tokenizer files", "checkpoint"]


@pytest.mark.parametrize("kind", KINDS)
def test_corruption_detected_and_recomputed(chain, kind, trials, chaos_record):
    extract_dir = chain.corpus.parent
    tok_dir = chain.tokenizer()
    tokens_dir = chain.tokenize()
    survived, notes = 0, []
    for trial in range(trials):
        rng = random.Random(f"{kind}-{trial}")
        results = []
        for mode in ("flip", "truncate"):
            if kind == "parquet shard":
                target = extract_dir / rng.choice(["part-00000.parquet", "part-00001.parquet", "rejects-00000.parquet"])
                results.append(
                    _trial(
                        chain.extract,
                        target,
                        lambda: (read_stage_table(extract_dir), read_stage_table(extract_dir, "rejects")),
                        mode,
                        rng,
                        extract_dir,
                    )
                )
            elif kind == "stage manifest":
                d = rng.choice([extract_dir, tokens_dir])
                step = chain.extract if d == extract_dir else chain.tokenize
                results.append(_trial(step, d / "_manifest.json", lambda: read_manifest(d), mode, rng, d))
            elif kind == "shard marker":
                # A marker is read when the stage (re)commits: a run that stopped before its
                # manifest finds a damaged marker, must not trust it, and redoes that shard.
                d = rng.choice([extract_dir, tokens_dir])
                step = chain.extract if d == extract_dir else chain.tokenize
                marker = d / rng.choice(["part-00000.done.json", "part-00001.done.json"])

                def read(d=d, marker=marker):
                    (d / "_manifest.json").unlink(missing_ok=True)  # the run stopped before its commit
                    read_marker(marker)

                results.append(_trial(step, marker, read, mode, rng, d))
            elif kind == "token shard":
                target = rng.choice(sorted(tokens_dir.glob("train-*.bin")))
                results.append(
                    _trial(chain.tokenize, target, lambda: TokenShards(tokens_dir, "train"), mode, rng, tokens_dir)
                )
            elif kind == "tokenizer files":
                target = tok_dir / rng.choice(["vocab.json", "merges.txt"])
                results.append(_trial(chain.tokenizer, target, lambda: Tokenizer.load(tok_dir), mode, rng, tok_dir))
            else:
                final = chain.pretrain()
                target = final / rng.choice(["model.safetensors", "optimizer.safetensors", "meta.json"])
                model = TransformerLM(chain.train_cfg().model)
                optimizer = AdamW(model.parameters())  # what a resume reads: weights and optimizer state
                results.append(
                    _trial(chain.pretrain, target, lambda: load_checkpoint(final, model, optimizer), mode, rng, final)
                )
                if not final.with_name(final.name + ".corrupt").is_dir():  # kept for inspection, not deleted
                    results.append((False, f"damaged checkpoint {final} was not set aside as {final.name}.corrupt"))
        ok = all(r for r, _ in results)
        survived += ok
        notes += [n for r, n in results if not r]
    chaos_record(
        "flipped byte / truncation of a finished file",
        kind,
        trials,
        survived,
        note="; ".join(notes) or "detected on read by checksum; rerun recomputed identical output",
    )
    assert survived == trials, notes
