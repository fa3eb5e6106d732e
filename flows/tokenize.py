"""Flow ``tokenize``: turn a corpus stage into token shards for pretraining.

Reads a corpus stage manifest and a tokenizer directory (from the ``tokenizer`` flow);
writes ``<root>/tokenize/<fingerprint>/train-NNNNN.bin`` and ``val-NNNNN.bin`` per corpus
shard (one mapped task each): little-endian uint16 ids (uint32 for vocabs over 65,536),
every document followed by ``<|endoftext|>``, split train/val by a hash of the document.
The manifest lists each file with its split, tokens, docs, bytes and sha256, plus dtype,
vocab_size, eot_id and the tokenizer path. Rerunning with the same inputs skips.

    lmpipe run tokenize --config configs/tokenize-demo.yaml --set input=... --set tokenizer=...

    import numpy as np; np.memmap("train-00000.bin", dtype=manifest["dtype"], mode="r")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import ConfigDict, Field, field_validator

from flows.runners import RunnerConfig, resolve_location, task_runner
from lm.config import Config, StageRef
from lm.data.shards import MANIFEST_NAME, read_manifest
from lm.data.storage import as_path, check_root, local_copy
from lm.tokenizer.stages import load_stage_tokenizer, local_tokenizer_dir, tokenize_stage
from tasks.artifacts import artifact_key, counts_rows, markdown_table
from tasks.tokenize import commit_tokenize_task, tokenize_shard_task


class TokenizeConfig(Config):
    """Tokenize a corpus stage into memory-mappable token shards."""

    model_config = ConfigDict(hide_input_in_errors=True)  # never echo a root URL with credentials

    input: StageRef = Field(
        description="Corpus stage manifest (or its directory, or `minhash@latest`): Parquet shards with a text column"
    )
    tokenizer: StageRef = Field(
        description=(
            "Tokenizer directory (or its _manifest.json, or "
            "`tokenizer@latest`) written by the tokenizer flow or Tokenizer.save"
        )
    )
    root: str = Field(
        "outputs",
        description="Artifact root; shards go to `<root>/tokenize/<fingerprint>/`; a local directory or a URL such as `s3://bucket/prefix`",
    )
    val_fraction: float = Field(
        0.01, ge=0.0, lt=1.0, description="Fraction of documents (by hash of id or text) written to val-*.bin"
    )
    text_field: str = Field(
        "text", min_length=1, description="Column of the corpus shards that holds the document text"
    )
    num_threads: int = Field(2, ge=1, le=64, description="tiktoken encoding threads per shard task")
    max_workers: int = Field(
        4, ge=1, le=256, description="shard tasks at once on this machine unless runner.max_workers is set"
    )
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig,
        description="where shard tasks run: threads (default), processes, "
        "a Dask or a Ray cluster (local, or an existing one by address); outputs are identical",
    )

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_root(v)


def tokenize_markdown(manifest_path: str | Path) -> str:
    m = read_manifest(manifest_path)
    x = m.extra
    md = [
        (
            f"# tokenize\nFingerprint `{m.fingerprint}` · directory `{m.dir}` · "
            f"dtype `{x['dtype']}` · vocab {x['vocab_size']} · eot {x['eot_id']}"
        ),
        f"Tokenizer: `{x['tokenizer']}`",
        "",
        markdown_table(counts_rows(m)),
        "## Shards",
        markdown_table(
            [
                {"name": s.name, "split": s.split, "docs": s.num_docs, "tokens": s.num_tokens, "bytes": s.num_bytes}
                for s in m.shards
            ]
        ),
    ]
    train = [i for i, s in enumerate(m.shards) if s.split == "train"]
    if train:
        from lm.tokenizer import Tokenizer

        # A remote shard is memory-mapped from the local cache ($LMPIPE_CACHE, keyed by sha256).
        first = local_copy(m.shard_path(train[0]), m.shards[train[0]].sha256)  # a preview: no full hash
        ids = np.memmap(first, dtype=x["dtype"], mode="r")[:200]
        text = Tokenizer.load(local_tokenizer_dir(x["tokenizer"])).decode(ids.tolist())
        md += ["## First tokens of " + m.shards[train[0]].name, "> " + text.replace("\n", "\n> ")]
    return "\n".join(md)


def _tokenizer_dir(path: str) -> str:
    p = as_path(path)
    return str(p.parent if p.name == MANIFEST_NAME else p)


@flow(name="tokenize", log_prints=True)
def tokenize_flow(config: TokenizeConfig) -> str:
    """Tokenize every corpus shard (in parallel); returns the token stage's manifest path."""
    # Absolute locations: shard tasks may run in other processes or on other machines.
    root, tok_dir = resolve_location(config.root), resolve_location(_tokenizer_dir(config.tokenizer))
    corpus = read_manifest(resolve_location(config.input))  # bad inputs fail before any work
    load_stage_tokenizer(tok_dir)
    manifest_path = str(corpus.path)
    stage = tokenize_stage(root, manifest_path, tok_dir, val_fraction=config.val_fraction, text_field=config.text_field)
    if not stage.is_complete():
        n = corpus.num_shards
        get_run_logger().info("tokenize: %d shard(s) on %s", n, config.runner.describe(config.max_workers))
        with task_runner(config.runner, config.max_workers) as runner:
            params = dict(
                root=root,
                corpus_manifest=manifest_path,
                tokenizer_dir=tok_dir,
                val_fraction=config.val_fraction,
                text_field=config.text_field,
                num_threads=config.num_threads,
            )
            futures = runner.map(
                tokenize_shard_task, {**{k: unmapped(v) for k, v in params.items()}, "index": list(range(n))}
            )
            futures.result()  # raises if a shard failed (after its retries)
        commit_tokenize_task(root, manifest_path, tok_dir, n, config.val_fraction, config.text_field)
    path = str(stage.manifest_path)
    m = read_manifest(path)
    create_table_artifact(
        table=counts_rows(m),
        key=artifact_key("tokenize", "counts"),
        description="tokenize: documents in / kept / rejected / failed, tokens",
    )
    create_markdown_artifact(
        markdown=tokenize_markdown(path),
        key=artifact_key("tokenize", "summary"),
        description="tokenize: shards and a decoded sample",
    )
    print(f"tokenize: {stage.path} ({m['counts']['tokens_train']:,} train / {m['counts']['tokens_val']:,} val tokens)")
    return path
