"""The data flow with its artifact root on S3 (moto's server mode on 127.0.0.1: a real S3 API
over HTTP): same output as on a local root, skips on rerun, no credential written anywhere."""

import json
import logging
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from moto_s3 import BUCKET, FAKE_KEY_ID, FAKE_SECRET, list_objects, moto_s3

from flows.data import DataConfig, data_flow
from lm.data.shards import accounted, read_manifest, read_stage_table

CC = "commoncrawl"
ROOT = f"s3://{BUCKET}/runs/a"
# The funnel without the quality classifier (it trains its default model first: slow).
FUNNEL = {"quality": {"enabled": False}}


def _config(reference, root) -> dict:
    return {
        "sources": [str(reference / CC / "warcfile.warc.gz")],
        "root": str(root),
        "max_workers": 2,
        "extract": {"slice_bytes": 40_000},
        "filters": FUNNEL,
    }


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as client:
        yield client


@pytest.fixture(scope="module")
def runs(s3, reference, tmp_path_factory, prefect_harness):
    """The same config on a local root and on the S3 root; then a rerun on S3."""
    local = data_flow(config=DataConfig.model_validate(_config(reference, tmp_path_factory.mktemp("local"))))
    remote = data_flow(config=DataConfig.model_validate(_config(reference, ROOT)))
    before = list_objects(s3, prefix="runs/a/")
    time.sleep(1.1)  # LastModified has one-second resolution: a rewrite would show
    rerun = data_flow(config=DataConfig.model_validate(_config(reference, ROOT)))
    after = list_objects(s3, prefix="runs/a/")
    return local, remote, rerun, before, after


def test_s3_root_gives_the_same_shards_as_a_local_root(runs, s3):
    local, remote, _, _, _ = runs
    assert list(remote) == list(local) == ["extract", "filters", "exact_dedup", "minhash"]
    for stage in local:
        assert remote[stage].startswith(f"{ROOT}/{stage}/")
        m_local, m_remote = read_manifest(local[stage]), read_manifest(remote[stage])
        assert m_remote["fingerprint"] == m_local["fingerprint"], stage
        assert [s["sha256"] for s in m_remote["shards"]] == [s["sha256"] for s in m_local["shards"]], stage
        assert [s["sha256"] for s in m_remote["rejects"]] == [s["sha256"] for s in m_local["rejects"]], stage
        assert m_remote["counts"] == m_local["counts"] and accounted(m_remote), stage
        if stage != "extract":  # lineage points at the upstream manifests on S3
            assert m_remote["inputs"][0]["path"].startswith(f"{ROOT}/")
    m = read_manifest(local["extract"])
    assert m["counts"]["in"] == 50 and len(m["shards"]) == 4


def test_s3_parquet_reads_back_byte_identical(runs, s3):
    local, remote, _, _, _ = runs
    for stage in ("extract", "minhash"):
        m = read_manifest(remote[stage])
        local_dir = Path(local[stage]).parent
        key_dir = remote[stage].removeprefix(f"s3://{BUCKET}/").rsplit("/", 1)[0]
        for s in m["shards"]:
            body = s3.get_object(Bucket=BUCKET, Key=f"{key_dir}/{s['name']}")["Body"].read()
            assert body == (local_dir / s["name"]).read_bytes(), (stage, s["name"])
        assert read_stage_table(remote[stage]).equals(read_stage_table(local[stage]))
        first = local_dir / m["shards"][0]["name"]
        assert read_stage_table(remote[stage]).schema == pq.read_schema(first)


def test_rerun_on_s3_skips_every_stage(runs):
    _, remote, rerun, before, after = runs
    assert rerun == remote
    stage_objects = lambda objs: {k: v for k, v in objs.items() if not k.startswith("runs/a/funnel/")}
    assert stage_objects(after) == stage_objects(before)  # same keys, etags and LastModified: nothing rewritten
    assert not [
        k for k in after if k.rsplit("/", 1)[-1].startswith(".") and not k.endswith("/.lmpipe-key")
    ]  # no temporary keys left (the root's signing key stays)
    committed = {k.split("/")[2] for k in after if k.endswith("/_manifest.json")}
    assert committed == {
        "extract",
        "filters",
        "line_counts",
        "line_duplicates",
        "exact_dedup",
        "minhash_signatures",
        "minhash_buckets",
        "minhash_clusters",
        "minhash",
    }


def test_root_validation_names_the_value_and_hides_secrets(reference):
    with pytest.raises(ValueError, match=r"s4://bucket/x.*unsupported scheme 's4'.*s3://"):
        DataConfig.model_validate(_config(reference, "s4://bucket/x"))
    with pytest.raises(ValueError) as e:
        DataConfig.model_validate(_config(reference, f"s3://{FAKE_KEY_ID}:{FAKE_SECRET}@{BUCKET}/x"))
    assert "embeds credentials" in str(e.value) and "root" in str(e.value)
    assert FAKE_SECRET not in str(e.value) and FAKE_KEY_ID not in str(e.value)
    with pytest.raises(ValueError, match="no query string"):
        DataConfig.model_validate(_config(reference, f"s3://{BUCKET}/x?secret={FAKE_SECRET}"))
    assert DataConfig.model_validate(_config(reference, "memory://lmpipe/x")).root == "memory://lmpipe/x"
    # the CLI path (`lmpipe run data --set root=…`) shows the same redacted error
    from flows.cli import build_config

    with pytest.raises(ValueError) as e:
        build_config(
            DataConfig,
            None,
            [f"sources=[{reference / CC / 'warcfile.warc.gz'}]", f"root=s3://{FAKE_KEY_ID}:{FAKE_SECRET}@{BUCKET}/x"],
        )
    assert "root" in str(e.value) and "s3://***@" in str(e.value) and FAKE_SECRET not in str(e.value)


def test_boto_debug_logging_of_a_stage_does_not_carry_the_secret(s3, caplog, tmp_path):
    """Even with botocore's own loggers at DEBUG (what a user turns on to debug S3), the
    stage's writes do not log the secret key (botocore signs with it but never logs it)."""
    import pyarrow as pa

    from lm.data.shards import Stage

    caplog.set_level(logging.DEBUG)
    st = Stage(f"s3://{BUCKET}/runs/debug", "demo", version="1", config={})
    with st.open_shard(0, schema=pa.schema([("id", pa.string())])) as w:
        w.count_in()
        w.write({"id": "a"})
    st.commit(num_shards=1)
    assert len(caplog.records) > 5
    assert FAKE_SECRET not in caplog.text


@pytest.fixture(scope="module")
def token_stages(runs, tmp_path_factory):
    """tokenizer + tokenize of the extract corpus on the local root and on the S3 root."""
    from flows.tokenize import TokenizeConfig, tokenize_flow
    from flows.tokenizer import TokenizerConfig, tokenizer_flow

    local, remote, _, _, _ = runs
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMPIPE_CACHE", str(tmp_path_factory.mktemp("cache")))  # remote shards are fetched here
        for name, corpus, root in (
            ("local", local["extract"], str(Path(local["extract"]).parents[2])),
            ("s3", remote["extract"], ROOT),
        ):
            tok = tokenizer_flow(TokenizerConfig(input=corpus, root=root, vocab_size=400, sample_bytes=200_000))
            tok_dir = tok.rsplit("/", 1)[0]
            out[name] = (
                tok_dir,
                tokenize_flow(TokenizeConfig(input=corpus, tokenizer=tok_dir, root=root, val_fraction=0.2)),
            )
    return out


def test_tokenizer_and_tokenize_on_s3_match_local_and_feed_training(token_stages, tmp_path, monkeypatch):
    """Tokenizer training and tokenize on the S3 root give the files of a local root; the trainer's
    reader memory-maps the remote token shards from the sha256-keyed local cache."""
    import numpy as np

    from lm.data.storage import as_path
    from lm.train.data import TokenShards

    monkeypatch.setenv("LMPIPE_CACHE", str(tmp_path / "cache"))
    out = token_stages
    (ltok, ltoks), (rtok, rtoks) = out["local"], out["s3"]
    assert rtoks.startswith(f"{ROOT}/tokenize/") and read_manifest(rtoks)["tokenizer"] == rtok
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "tokenizer.tiktoken"):
        assert (as_path(rtok) / f).read_bytes() == (Path(ltok) / f).read_bytes(), f
    ml, mr = read_manifest(ltoks), read_manifest(rtoks)
    assert mr["fingerprint"] == ml["fingerprint"] and {s["split"] for s in mr["shards"]} == {"train", "val"}
    assert [(s["name"], s["sha256"]) for s in mr["shards"]] == [(s["name"], s["sha256"]) for s in ml["shards"]]
    shards = TokenShards(as_path(rtoks).parent, "train", vocab_size=400)
    assert all(str(a.filename).startswith(str(tmp_path / "cache" / "artifacts")) for a in shards.arrays)
    expected = TokenShards(Path(ltoks).parent, "train", vocab_size=400)
    assert shards.num_tokens == expected.num_tokens > 1000
    assert all(np.array_equal(a, b) for a, b in zip(shards.arrays, expected.arrays))
    # the scaling sweep takes the same remote corpus (its runs train through TokenShards)
    from lm.scaling.sweep import corpus_info

    info, local_info = corpus_info(rtoks), corpus_info(ltoks)
    assert info["dir"] == str(as_path(rtoks).parent) and info["tokens"] == local_info["tokens"]


def test_stages_not_ported_refuse_a_url_root_at_validation():
    import yaml

    from flows.dpo import DPOFlowConfig
    from lm.scaling.sweep import ScalingConfig
    from tasks.pretrain import PretrainConfig

    train = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "pretrain-demo.yaml").read_text())[
        "train"
    ]
    for build, stage in (
        (lambda r: PretrainConfig(root=r, tokens="x", train=train), "pretrain"),
        (lambda r: DPOFlowConfig(root=r), "dpo"),
        (lambda r: ScalingConfig(root=r), "scaling"),
    ):
        with pytest.raises(
            ValueError, match=rf"root 's3://{BUCKET}/x' is not supported by stage {stage} yet; use a local root"
        ):
            build(f"s3://{BUCKET}/x")
    assert PretrainConfig(root="outputs", tokens=f"s3://{BUCKET}/t/tokenize/fp", train=train).tokens.startswith("s3://")
    with pytest.raises(ValueError, match="unsupported scheme 's4'"):
        PretrainConfig(root="outputs", tokens="s4://b/t", train=train)


TINY = dict(
    model=dict(vocab_size=400, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=64),
    batch_size=8,
    max_steps=20,
    lr=3e-3,
    warmup_steps=5,
    eval_interval=10,
    eval_batches=2,
    checkpoint_interval=10,
    log_interval=10,
    device="cpu",
)


def test_pretrain_trains_on_token_shards_of_an_s3_root(token_stages, tmp_path, monkeypatch):
    """pretrain with ``tokens`` on S3 and a local root: the training subprocess reads the shards
    through the cache (the AWS variables reach it), samples decode with the remote tokenizer."""
    from flows.pretrain import pretrain_flow
    from tasks.pretrain import PretrainConfig

    monkeypatch.setenv("LMPIPE_CACHE", str(tmp_path / "cache"))
    tok_dir, tokens = token_stages["s3"]
    cfg = PretrainConfig(
        root=str(tmp_path / "out"),
        tokens=tokens.rsplit("/", 1)[0],
        train=TINY,
        sample_prompts=["The "],
        sample_tokens=10,
        timeout_s=300,
        retries=0,
    )
    m = read_manifest(pretrain_flow(config=cfg))
    assert m["inputs"][0]["path"] == tokens and m["tokenizer"] == tok_dir
    assert m["counts"]["steps"] == 20 and m["final_val_loss"] is not None
    samples = json.loads((Path(m["_path"]).parent / "samples.json").read_text())
    assert samples and samples[0]["prompt"] == "The "
    assert list((tmp_path / "cache" / "artifacts").glob("*/*.bin"))  # memory-mapped from the cache


def test_no_credentials_in_artifacts_manifests_or_logs(runs, s3, prefect_harness):
    """The secret and key id are in the environment of every run above (data, tokenizer, tokenize;
    this test runs last); they must not be in any object written under the root, nor in the
    Prefect logs and artifacts of those runs."""
    from prefect.client.orchestration import get_client

    leaks = []
    for key in list_objects(s3):
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        if FAKE_SECRET.encode() in body or FAKE_KEY_ID.encode() in body:
            leaks.append(key)
    with get_client(sync_client=True) as client:
        logs = client.read_logs()
        artifacts = client.read_artifacts()
    assert len(logs) > 10 and len(artifacts) > 10  # the runs' records are there to search
    texts = [log.message for log in logs] + [str(a.data) + str(a.description) for a in artifacts]
    leaks += [t[:80] for t in texts if FAKE_SECRET in t or FAKE_KEY_ID in t]
    assert leaks == []
