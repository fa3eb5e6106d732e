"""Shared fixtures: the CS336 fixture folder, GPT-2 tokenizers (ours and tiktoken's), real text."""

import json
from pathlib import Path

import pytest

from lm.tokenizer import Tokenizer
from lm.tokenizer.gpt2 import EOT, GPT2_PATTERN, decode_token


@pytest.fixture(scope="session")
def fixtures(reference) -> Path:
    return reference / "assignment1-basics" / "fixtures"


@pytest.fixture(scope="session")
def gpt2(fixtures) -> Tokenizer:
    return Tokenizer.from_files(fixtures / "gpt2_vocab.json", fixtures / "gpt2_merges.txt", [EOT], use_fast=False)


@pytest.fixture(scope="session")
def tiktoken_gpt2(fixtures):
    """tiktoken's GPT-2 encoding, built from the local files (tiktoken cannot download here)."""
    import tiktoken

    raw = json.loads((fixtures / "gpt2_vocab.json").read_text(encoding="utf-8"))
    ranks = {decode_token(k): v for k, v in raw.items() if k != EOT}
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})


@pytest.fixture(scope="session")
def gsm8k_text(reference) -> str:
    """~4 MB of real English (GSM8K train questions and answers)."""
    rows = [
        json.loads(line) for line in (reference / "assignment5-alignment/data/gsm8k/train.jsonl").open(encoding="utf-8")
    ]
    return "\n\n".join(r["question"] + "\n" + r["answer"] for r in rows)


def build_corpus_stage(root: Path, reference: Path, num_shards: int = 3) -> Path:
    """A corpus stage like the dedup output: real documents (TinyStories, GSM8K, German,
    an address) in Parquet shards with id/text columns, plus an empty and a null text."""
    import pyarrow as pa

    from lm.data.shards import Stage

    fx = reference / "assignment1-basics" / "fixtures"
    docs = [d.strip() for d in (fx / "tinystories_sample.txt").read_text(encoding="utf-8").split(EOT) if d.strip()]
    docs += [(fx / "german.txt").read_text(encoding="utf-8"), (fx / "address.txt").read_text(encoding="utf-8")]
    rows = [
        json.loads(line)
        for _, line in zip(
            range(300), (reference / "assignment5-alignment/data/gsm8k/train.jsonl").open(encoding="utf-8")
        )
    ]
    docs += [r["question"] + "\n" + r["answer"] for r in rows]
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    stage = Stage(root, "corpus", version="1", config={"fixture": "tokenizer-tests"})
    per = -(-len(docs) // num_shards)
    for i in range(num_shards):
        with stage.open_shard(i, schema=schema) as w:
            for j, text in enumerate(docs[i * per : (i + 1) * per]):
                w.count_in()
                w.write({"id": f"doc-{i}-{j}", "text": text})
            if i == 0:
                w.count_in(2)
                w.write({"id": "empty", "text": "   "})
                w.write({"id": "null", "text": None})
    return stage.commit(num_shards)


@pytest.fixture(scope="session")
def corpus_builder():
    return build_corpus_stage
