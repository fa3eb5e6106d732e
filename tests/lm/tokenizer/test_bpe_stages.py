"""The tokenizer and tokenize stages as plain functions (no Prefect): outputs and manifests."""

import numpy as np
import pytest

from lm.data.shards import describe, read_manifest, read_stage_table
from lm.tokenizer import Tokenizer
from lm.tokenizer.gpt2 import EOT
from lm.tokenizer.stages import (
    commit_tokenize,
    doc_fraction,
    token_dtype,
    tokenize_shard,
    tokenize_stage,
    train_tokenizer_stage,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, reference, corpus_builder):
    return corpus_builder(tmp_path_factory.mktemp("corpus"), reference)


def test_tokenizer_stage_writes_dir_and_manifest(corpus, tmp_path):
    path = train_tokenizer_stage(
        tmp_path, corpus, vocab_size=600, special_tokens=[EOT], sample_bytes=10_000_000, heldout_fraction=0.05
    )
    m = read_manifest(path)
    assert m["stage"] == "tokenizer" and m["shards"] == [] and path.parent.parent == tmp_path / "tokenizer"
    assert {"stage", "fingerprint", "config", "inputs", "shards", "counts"} <= set(m)
    c = m["counts"]
    # 2 bad rows: the blank one rejected, the null one failed; everything accounted for.
    assert c["rejected"]["empty"] == 1 and c["failed"]["not_text"] == 1
    assert c["in"] == c["kept"] + sum(c["rejected"].values()) + sum(c["failed"].values())
    assert c["rejected"].get("heldout", 0) == m["summary"]["heldout_docs"] > 0
    tok = Tokenizer.load(path.parent)
    assert tok.vocab_size == 600 and tok.eot_id == 256
    assert 2.0 < m["summary"]["bytes_per_token"] < 8.0
    assert len(m["summary"]["first_merges"]) == 20
    assert {p.name for p in path.parent.iterdir()} >= {
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "tokenizer.json",
        "tokenizer.tiktoken",
    }
    # Same inputs, same config: skipped (the manifest is not rewritten).
    mtime = path.stat().st_mtime_ns
    assert (
        train_tokenizer_stage(
            tmp_path, corpus, vocab_size=600, special_tokens=[EOT], sample_bytes=10_000_000, heldout_fraction=0.05
        )
        == path
    )
    assert path.stat().st_mtime_ns == mtime


def test_sample_budget_is_respected(corpus, tmp_path):
    path = train_tokenizer_stage(
        tmp_path, corpus, vocab_size=300, special_tokens=[EOT], sample_bytes=30_000, heldout_fraction=0.0
    )
    c = read_manifest(path)["counts"]
    assert 30_000 <= c["sample_bytes"] < 30_000 + 3 * 5_000  # each shard stops after its ~10 KB share
    assert c["rejected"]["over_budget"] > 0 or c["in"] < 400


def test_tokenize_stage_bins_decode_to_documents(corpus, tmp_path, gpt2):
    tok_dir = gpt2.save(tmp_path / "gpt2tok")  # no manifest: identified by its files' hashes
    tok = Tokenizer.load(tok_dir)
    stage = tokenize_stage(tmp_path, corpus, tok_dir, val_fraction=0.2, text_field="text")
    for i in range(3):
        tokenize_shard(stage, corpus, tok, i, val_fraction=0.2, text_field="text")
    m = read_manifest(commit_tokenize(stage, 3, tok_dir, tok))
    assert m["stage"] == "tokenize" and m["dtype"] == "uint16" and m["vocab_size"] == 50257 and m["eot_id"] == 50256
    names = sorted(s["name"] for s in m["shards"])
    assert "train-00000.bin" in names and "val-00000.bin" in names
    table = read_stage_table(corpus)
    docs = {r["id"]: r["text"] for r in table.to_pylist() if isinstance(r["text"], str) and r["text"].strip()}
    val_docs = {k for k in docs if doc_fraction(k) < 0.2}
    decoded = {"train": [], "val": []}
    for s in m["shards"]:
        arr = np.memmap(stage.path / s["name"], dtype=m["dtype"], mode="r")
        assert len(arr) == s["tokens"] and s["bytes"] == 2 * s["tokens"]
        assert arr[-1] == 50256 and int((arr == 50256).sum()) == s["docs"]
        decoded[s["split"]] += tok.decode(arr.tolist()).split(EOT)[:-1]
    assert sorted(decoded["val"]) == sorted(docs[k] for k in val_docs)
    assert sorted(decoded["train"]) == sorted(v for k, v in docs.items() if k not in val_docs)
    c = m["counts"]
    assert c["tokens_train"] + c["tokens_val"] == sum(s["tokens"] for s in m["shards"])
    assert c["kept"] == len(docs) and c["rejected"] == {"empty": 1} and c["failed"] == {"not_text": 1}
    # `lmpipe inspect` summarizes a token stage too (no Parquet rows to sample).
    text = describe(stage.path)
    assert "stage       tokenize" in text and "tokens_train: " + str(c["tokens_train"]) in text


def test_token_dtype_by_vocab_size():
    assert token_dtype(65_536) == np.dtype("<u2") and token_dtype(65_537) == np.dtype("<u4")


def test_tokenize_needs_eot(corpus, tmp_path, fixtures):
    from lm.tokenizer.stages import load_stage_tokenizer

    tok = Tokenizer.from_files(fixtures / "train-bpe-reference-vocab.json", fixtures / "train-bpe-reference-merges.txt")
    # The reference vocab spells <|endoftext|> as an ordinary token: make one without it.
    vocab = {i: t for i, t in tok.vocab.items() if t != EOT.encode()}
    d = Tokenizer(vocab, tok.merges).save(tmp_path / "noeot")
    with pytest.raises(ValueError, match="has no '<\\|endoftext\\|>' token"):
        load_stage_tokenizer(d)
