"""Task: train the BPE tokenizer on a sample of a corpus stage (see ``lm.tokenizer.stages``)."""

from __future__ import annotations

from prefect import task

from lm.tokenizer.stages import train_tokenizer_stage


@task(name="train-tokenizer", retries=1, retry_delay_seconds=5)
def train_tokenizer_task(root: str, corpus_manifest: str, params: dict) -> str:
    """Writes ``<root>/tokenizer/<fingerprint>/``; returns its manifest path (skips if done)."""
    return str(train_tokenizer_stage(root, corpus_manifest, **params))
