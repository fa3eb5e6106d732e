"""The pretrain flow with train.strategy=ddp on 2 CPU processes (torchrun, gloo) reaches the
same losses as the same config with strategy none."""

import pytest

from lm.data.shards import read_manifest
from lm.train.stage import PretrainConfig

TINY = dict(
    model=dict(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96, tie_embeddings=True),
    batch_size=8,
    max_steps=12,
    lr=3e-3,
    warmup_steps=2,
    eval_interval=6,
    eval_batches=2,
    checkpoint_interval=6,
    log_interval=6,
    device="cpu",
)


def test_pretrain_flow_ddp_matches_single_process(prefect_harness, reference, tmp_path):
    from flows.pretrain import pretrain_flow

    common = dict(
        root=str(tmp_path),
        text_file=str(reference / "assignment1-basics/fixtures/corpus.en"),
        sample_prompts=["The "],
        sample_tokens=8,
        timeout_s=300,
        retries=0,
    )
    single = read_manifest(pretrain_flow(config=PretrainConfig(train=TINY, **common)))
    ddp_cfg = PretrainConfig(train={**TINY, "strategy": "ddp"}, launcher="torchrun", nproc_per_node=2, **common)
    ddp = read_manifest(pretrain_flow(config=ddp_cfg))
    assert ddp["fingerprint"] != single["fingerprint"]  # two runs, not a skipped rerun
    assert ddp["counts"]["steps"] == single["counts"]["steps"] == 12
    assert abs(ddp["final_train_loss"] - single["final_train_loss"]) < 1e-4
    assert abs(ddp["final_val_loss"] - single["final_val_loss"]) < 1e-4


def test_torchrun_config_checks_the_batch_split():
    with pytest.raises(ValueError, match="batch_size=6 must be divisible by the world size 4"):
        PretrainConfig(
            text_file="x", train={**TINY, "batch_size": 6, "strategy": "ddp"}, launcher="torchrun", nproc_per_node=4
        )
