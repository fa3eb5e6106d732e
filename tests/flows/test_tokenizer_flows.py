"""The tokenizer and tokenize flows under a real (temporary) Prefect server."""

import json

import numpy as np
import pyarrow as pa
import pytest

from flows.cli import FLOWS, build_config, config_model, load_flow
from flows.tokenize import TokenizeConfig, tokenize_flow
from flows.tokenizer import TokenizerConfig, tokenizer_flow
from lm.data.shards import Stage, read_manifest, read_stage_table
from lm.tokenizer import Tokenizer

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, reference):
    """A small corpus stage of real documents (TinyStories + GSM8K), 2 shards."""
    fx = reference / "assignment1-basics" / "fixtures"
    docs = [d.strip() for d in (fx / "tinystories_sample.txt").read_text(encoding="utf-8").split(EOT) if d.strip()]
    with (reference / "assignment5-alignment/data/gsm8k/test.jsonl").open(encoding="utf-8") as f:
        docs += [(r := json.loads(line))["question"] + "\n" + r["answer"] for _, line in zip(range(400), f)]
    stage = Stage(tmp_path_factory.mktemp("corpus"), "corpus", version="1", config={"fixture": "flows"})
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    for i in range(2):
        with stage.open_shard(i, schema=schema) as w:
            for j, text in enumerate(docs[i::2]):
                w.count_in()
                w.write({"id": f"d{i}-{j}", "text": text})
    return str(stage.commit(2))


def test_flows_registered_and_configs_validate(tmp_path):
    assert (
        FLOWS["tokenizer"] == "flows.tokenizer:tokenizer_flow" and FLOWS["tokenize"] == "flows.tokenize:tokenize_flow"
    )
    assert config_model(load_flow("tokenizer")) is TokenizerConfig
    cfg = build_config(TokenizerConfig, "configs/tokenizer-demo.yaml", ["input=x", "vocab_size=2000"])
    assert cfg.vocab_size == 2000 and cfg.special_tokens == [EOT]
    assert build_config(TokenizeConfig, "configs/tokenize-demo.yaml", ["input=x", "tokenizer=y"]).val_fraction == 0.05
    # The named configs read the newest corpus and tokenizer under root: none there yet.
    with pytest.raises(ValueError, match=r"input='minhash@latest': no stage folder at .*minhash"):
        build_config(TokenizeConfig, "configs/tokenize-demo.yaml", [f"root={tmp_path}"])
    with pytest.raises(ValueError, match="vocab_size"):
        TokenizerConfig(input="x", vocab_size=100)
    with pytest.raises(ValueError, match="val_fraction"):
        TokenizeConfig(input="x", tokenizer="y", val_fraction=1.5)


def test_tokenizer_then_tokenize_flow(prefect_harness, corpus, tmp_path):
    root = str(tmp_path / "out")
    tpath = tokenizer_flow(
        TokenizerConfig(input=corpus, root=root, vocab_size=1000, sample_bytes=5_000_000, heldout_fraction=0.05)
    )
    tm = read_manifest(tpath)
    assert tm["stage"] == "tokenizer" and tm["summary"]["vocab_size"] == 1000
    assert (tmp_path / "out" / "tokenizer" / tm["fingerprint"] / "token_lengths.png").exists()
    tok_dir = str(tmp_path / "out" / "tokenizer" / tm["fingerprint"])

    path = tokenize_flow(TokenizeConfig(input=corpus, tokenizer=tok_dir, root=root, val_fraction=0.1))
    m = read_manifest(path)
    assert m["stage"] == "tokenize" and m["dtype"] == "uint16" and m["eot_id"] == 256 and m["tokenizer"] == tok_dir
    assert {s["split"] for s in m["shards"]} == {"train", "val"}
    assert {s["index"] for s in m["shards"]} == {0, 1}
    assert m["counts"]["in"] == m["counts"]["kept"] == read_manifest(corpus)["counts"]["kept"]
    tok = Tokenizer.load(tok_dir)
    train0 = np.memmap(tmp_path / "out" / "tokenize" / m["fingerprint"] / "train-00000.bin", dtype=m["dtype"], mode="r")
    first_doc = tok.decode(train0.tolist()).split(EOT)[0]
    assert first_doc in set(read_stage_table(corpus).column("text").to_pylist())

    # Rerun: same fingerprint, nothing rewritten.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "tokenize" / m["fingerprint"]).iterdir()}
    assert (
        tokenize_flow(TokenizeConfig(input=corpus, tokenizer=tok_dir + "/_manifest.json", root=root, val_fraction=0.1))
        == path
    )
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "tokenize" / m["fingerprint"]).iterdir()}
    assert before == after


def test_tokenize_flow_bad_inputs_fail_before_work(prefect_harness, corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        tokenize_flow(TokenizeConfig(input=corpus, tokenizer=str(tmp_path / "none"), root=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="no stage manifest"):
        tokenizer_flow(TokenizerConfig(input=str(tmp_path / "nothing"), root=str(tmp_path)))
    assert not (tmp_path / "tokenize").exists() and not (tmp_path / "tokenizer").exists()
