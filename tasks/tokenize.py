"""Tasks: tokenize one corpus shard into token ``.bin`` files; commit the stage manifest."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from prefect import task

from lm.data.storage import as_path
from lm.tokenizer.stages import commit_tokenize, load_stage_tokenizer, tokenize_shard, tokenize_stage


@lru_cache(maxsize=4)
def _tokenizer(tokenizer_dir: str, mtime_ns: int):
    # One load per tokenizer per worker process; shard tasks in threads share it.
    return load_stage_tokenizer(tokenizer_dir)


def cached_tokenizer(tokenizer_dir: str):
    vocab = as_path(tokenizer_dir) / "vocab.json"
    if isinstance(vocab, Path):
        return _tokenizer(tokenizer_dir, vocab.stat().st_mtime_ns)
    info = vocab.stat().info  # a remote object: its ETag (or time) says whether it changed
    return _tokenizer(tokenizer_dir, hash(str(info.get("ETag") or info.get("LastModified") or info.get("created"))))


@task(name="tokenize-shard", retries=2, retry_delay_seconds=2)
def tokenize_shard_task(
    root: str,
    corpus_manifest: str,
    tokenizer_dir: str,
    index: int,
    val_fraction: float,
    text_field: str,
    num_threads: int,
) -> str:
    """Corpus shard ``index`` → ``train-NNNNN.bin`` / ``val-NNNNN.bin`` + marker; returns the marker path."""
    stage = tokenize_stage(root, corpus_manifest, tokenizer_dir, val_fraction=val_fraction, text_field=text_field)
    tok = cached_tokenizer(tokenizer_dir)
    return str(
        tokenize_shard(
            stage,
            corpus_manifest,
            tok,
            index,
            val_fraction=val_fraction,
            text_field=text_field,
            num_threads=num_threads,
        )
    )


@task(name="commit-tokenize")
def commit_tokenize_task(
    root: str, corpus_manifest: str, tokenizer_dir: str, num_shards: int, val_fraction: float, text_field: str
) -> str:
    stage = tokenize_stage(root, corpus_manifest, tokenizer_dir, val_fraction=val_fraction, text_field=text_field)
    return str(commit_tokenize(stage, num_shards, tokenizer_dir, cached_tokenizer(tokenizer_dir)))
