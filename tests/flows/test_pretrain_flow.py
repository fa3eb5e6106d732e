"""The pretrain flow end to end under a temporary Prefect server: bytes of corpus.en → checkpoint stage."""

import json
from pathlib import Path

import pytest

from lm.data.shards import read_manifest
from lm.model import load_model
from lm.train.stage import PretrainConfig

TINY = dict(
    model=dict(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96),
    batch_size=8,
    max_steps=60,
    lr=3e-3,
    warmup_steps=5,
    eval_interval=30,
    eval_batches=2,
    checkpoint_interval=30,
    log_interval=30,
    device="cpu",
)


def test_pretrain_flow_trains_publishes_and_skips_on_rerun(prefect_harness, reference, tmp_path):
    from prefect.client.orchestration import get_client  # noqa: F401  (the harness is up)

    from flows.pretrain import pretrain_flow

    cfg = PretrainConfig(
        root=str(tmp_path),
        text_file=str(reference / "assignment1-basics/fixtures/corpus.en"),
        train=TINY,
        sample_prompts=["The "],
        sample_tokens=20,
        timeout_s=300,
        retries=0,
    )
    manifest_path = pretrain_flow(config=cfg)
    m = read_manifest(manifest_path)
    stage = Path(manifest_path).parent
    assert m["stage"] == "pretrain" and stage.parent.name == "pretrain" and m["shards"] == []
    assert m["inputs"][0]["stage"] == "bytetokens" and m["tokenizer"] == "bytes"
    assert m["counts"]["steps"] == 60 and m["counts"]["tokens_trained"] == 60 * 8 * 32
    assert m["checkpoint"].endswith("step-0000060") and load_model(m["checkpoint"]).config.d_model == 32
    assert m["final_val_loss"] < m["unigram_entropy"] + 0.5  # 60 tiny steps: near unigram level already
    losses = json.loads((stage / "losses.json").read_text())
    assert losses["final_train_loss"] == m["final_train_loss"]
    assert (stage / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    samples = json.loads((stage / "samples.json").read_text())
    assert samples[0]["prompt"] == "The " and len(samples[0]["completion"]) > 0
    mtime = Path(manifest_path).stat().st_mtime_ns
    assert pretrain_flow(config=cfg) == manifest_path  # same inputs + config: skipped
    assert Path(manifest_path).stat().st_mtime_ns == mtime


def test_pretrain_config_needs_exactly_one_input():
    with pytest.raises(ValueError, match="exactly one of tokens"):
        PretrainConfig(train=TINY)
    with pytest.raises(ValueError, match="exactly one of tokens"):
        PretrainConfig(train=TINY, tokens="a", text_file="b")
