"""Task runners as configuration: the data flow (extract + every funnel stage) on a Dask
LocalCluster (2 worker processes) and on a local Ray gives byte-identical outputs to the
threads runner; RunnerConfig rejects bad combinations before any work."""

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.data import DataConfig, data_flow
from flows.runners import RunnerConfig, build_task_runner, resolve_location
from lm.data.shards import accounted, iter_rows, manifest_dir, read_manifest

CC = "commoncrawl"
STAGES = ["extract", "filters", "exact_dedup", "minhash"]
# Loose thresholds: most documents reach the last stage, so every stage has real work and
# every classifier scores every document (a model that differed between processes would show).
FUNNEL = {
    "langid": {"languages": [], "min_score": 0.0},
    "rules": {
        "gopher_thresholds": {
            "min_words": 20,
            "min_alpha_word_fraction": 0.1,
            "min_mean_word_length": 1,
            "max_mean_word_length": 1000,
        },
        "c4": False,
        "bad_words": False,
    },
    "quality": {"min_score": 0.0},
    "harmful": {"enabled": True, "nsfw_max_score": 0.999, "toxic_max_score": 0.999},
    "minhash": {"num_hashes": 64, "num_bands": 16, "num_bucket_tasks": 2},
}


def data_config(reference: Path, root: Path, runner: dict) -> DataConfig:
    return DataConfig.model_validate(
        {
            "sources": [str(reference / CC / "warcfile.warc.gz"), str(reference / CC / "clueweb-quirk.warc.gz")],
            "root": str(root),
            "extract": {"slice_bytes": 100_000},  # 2 + 3 = 5 extract shards
            "max_workers": 2,
            "filters": FUNNEL,
            "runner": runner,
        }
    )


def outputs(stages: dict[str, str]) -> dict[str, dict]:
    """What a run produced, per stage: fingerprint, counts, shard checksums, Parquet bytes."""
    out = {}
    for name, path in stages.items():
        m = read_manifest(path)
        d = manifest_dir(m)
        out[name] = {
            "fingerprint": m["fingerprint"],
            "counts": m["counts"],
            "sha256": [(s["name"], s.get("sha256")) for s in m["shards"]],
            "parquet": {p.name: p.read_bytes() for p in sorted(d.glob("*.parquet"))},
        }
    return out


def assert_same_outputs(got: dict[str, str], want: dict[str, str]) -> None:
    assert list(got) == list(want) == STAGES
    a, b = outputs(got), outputs(want)
    for name in STAGES:
        assert a[name]["fingerprint"] == b[name]["fingerprint"], name
        assert a[name]["counts"] == b[name]["counts"], name
        assert a[name]["sha256"] == b[name]["sha256"], name
        assert a[name]["parquet"].keys() == b[name]["parquet"].keys(), name
        for f in a[name]["parquet"]:
            assert a[name]["parquet"][f] == b[name]["parquet"][f], f"{name}/{f}"
    ids = lambda stages, kind="shards": [r["id"] for r in iter_rows(stages["minhash"], kind=kind)]
    assert ids(got) == ids(want) and ids(got, "rejects") == ids(want, "rejects")


@pytest.fixture(scope="module")
def threads_run(prefect_harness, reference, tmp_path_factory):
    stages = data_flow(config=data_config(reference, tmp_path_factory.mktemp("threads"), {"kind": "threads"}))
    final = read_manifest(stages["minhash"])
    # The input is real work for every stage, not an empty funnel.
    assert read_manifest(stages["extract"])["counts"]["in"] == 50 + 30
    assert final["counts"]["kept"] >= 10 and all(accounted(read_manifest(p)) for p in stages.values())
    return stages


def test_dask_local_cluster_matches_threads(threads_run, reference, tmp_path):
    stages = data_flow(config=data_config(reference, tmp_path, {"kind": "dask", "max_workers": 2}))
    assert_same_outputs(stages, threads_run)


def test_ray_local_matches_threads(threads_run, reference, tmp_path):
    if importlib.util.find_spec("prefect_ray") is None:
        pytest.skip("prefect-ray / ray not installed (pip install 'lmpipe[ray]')")
    stages = data_flow(config=data_config(reference, tmp_path, {"kind": "ray", "max_workers": 2}))
    assert_same_outputs(stages, threads_run)


def test_tokenize_on_dask_matches_threads(prefect_harness, reference, tmp_path):
    """The tokenize flow's token shards are byte-identical on a Dask LocalCluster."""
    import pyarrow as pa

    from flows.tokenize import TokenizeConfig, tokenize_flow
    from lm.data.shards import Stage
    from lm.tokenizer import Tokenizer

    fx = reference / "assignment1-basics" / "fixtures"
    tok_dir = Tokenizer.from_files(fx / "gpt2_vocab.json", fx / "gpt2_merges.txt", ["<|endoftext|>"]).save(
        tmp_path / "gpt2"
    )
    docs = [
        d.strip()
        for d in (fx / "tinystories_sample.txt").read_text(encoding="utf-8").split("<|endoftext|>")
        if d.strip()
    ]
    corpus = Stage(tmp_path / "corpus", "corpus", version="1", config={"fixture": "runners"})
    for i in range(3):
        with corpus.open_shard(i, schema=pa.schema([("id", pa.string()), ("text", pa.string())])) as w:
            for j, text in enumerate(docs[i::3]):
                w.count_in()
                w.write({"id": f"d{i}-{j}", "text": text})
    corpus_manifest = str(corpus.commit(3))

    def run(root: Path, runner: dict) -> dict:
        m = read_manifest(
            tokenize_flow(
                TokenizeConfig(
                    input=corpus_manifest, tokenizer=str(tok_dir), root=str(root), val_fraction=0.2, runner=runner
                )
            )
        )
        return {
            "fingerprint": m["fingerprint"],
            "counts": m["counts"],
            "sha256": [(s["name"], s["sha256"]) for s in m["shards"]],
            "bins": {p.name: p.read_bytes() for p in sorted(manifest_dir(m).glob("*.bin"))},
        }

    threads = run(tmp_path / "threads", {"kind": "threads"})
    assert {"train-00000.bin", "train-00001.bin", "train-00002.bin"} <= threads["bins"].keys() and threads["counts"][
        "tokens_val"
    ] > 0
    assert run(tmp_path / "dask", {"kind": "dask", "max_workers": 2}) == threads


# --------------------------------------------------------------------------- configuration


def test_runner_config_rejects_bad_combinations():
    cases = {
        "address": {"kind": "threads", "address": "tcp://10.0.0.5:8786"},
        "address ": {"kind": "dask", "address": "not an address"},
        "address  ": {"kind": "ray", "address": "tcp://"},
        "max_workers": {"kind": "dask", "address": "tcp://10.0.0.5:8786", "max_workers": 4},
        "threads_per_worker": {"kind": "threads", "threads_per_worker": 2},
        "kind": {"kind": "spark"},
        "adress": {"kind": "dask", "adress": "tcp://10.0.0.5:8786"},
    }
    for field, raw in cases.items():
        with pytest.raises(ValidationError) as e:
            RunnerConfig.model_validate(raw)
        assert e.value.errors()[0]["loc"] == (field.strip(),), (raw, e.value.errors())
    assert RunnerConfig(kind="ray", address="auto").address == "auto"
    assert RunnerConfig(kind="dask", address="10.0.0.5:8786").describe(4) == "dask cluster at 10.0.0.5:8786"


def test_missing_extra_fails_at_validation(monkeypatch):
    import flows.runners

    monkeypatch.setitem(flows.runners._EXTRAS, "dask", "prefect_dask_not_installed_here")
    with pytest.raises(ValidationError, match=r"install 'lmpipe\[dask\]'"):
        DataConfig.model_validate({"sources": ["x.warc.gz"], "runner": {"kind": "dask"}})


def test_relative_source_with_cluster_address_fails(tmp_path):
    with pytest.raises(ValidationError, match="relative"):
        DataConfig.model_validate(
            {"sources": ["crawl/x.warc.gz"], "runner": {"kind": "dask", "address": "tcp://10.0.0.5:8786"}}
        )
    ok = DataConfig.model_validate(
        {
            "sources": [str(tmp_path / "x.warc.gz"), "https://example.com/x.warc.gz"],
            "runner": {"kind": "dask", "address": "tcp://10.0.0.5:8786"},
        }
    )
    assert ok.runner.address == "tcp://10.0.0.5:8786"


def test_max_workers_sizes_the_default_runner():
    cfg = DataConfig.model_validate({"sources": ["x.warc.gz"], "max_workers": 3})
    assert cfg.runner.kind == "threads" and build_task_runner(cfg.runner, cfg.max_workers)._max_workers == 3
    cfg = DataConfig.model_validate({"sources": ["x.warc.gz"], "max_workers": 3, "runner": {"max_workers": 5}})
    assert build_task_runner(cfg.runner, cfg.max_workers)._max_workers == 5
    runner = build_task_runner(RunnerConfig(kind="dask", max_workers=2), 8)
    assert runner.cluster_kwargs["n_workers"] == 2 and runner.cluster_kwargs["threads_per_worker"] == 1


def test_cli_sets_the_runner(tmp_path):
    from flows.cli import build_config, config_model, load_flow

    for flow in ("data", "filters", "tokenize", "scaling"):
        assert "runner" in config_model(load_flow(flow)).model_fields, flow
    cfg = build_config(
        DataConfig,
        None,
        ['sources=["/data/crawl/*.warc.gz"]', "runner.kind=dask", "runner.address=tcp://10.0.0.5:8786"],
    )
    assert (cfg.runner.kind, cfg.runner.address) == ("dask", "tcp://10.0.0.5:8786")


def test_runner_does_not_change_the_scaling_fingerprint(tmp_path):
    import pyarrow as pa

    from flows.scaling import ScalingFlowConfig
    from lm.data.shards import Stage
    from lm.scaling.stage import scaling_stage

    tokens = Stage(tmp_path, "tokens", version="test", config={})
    with tokens.open_shard(0, schema=pa.schema([("a", pa.int64())])):
        pass
    base = {"corpus": "c", "budgets": [1e9, 2e9], "model_sizes": [1, 2, 3], "target_budget": 1e11}
    corpus = {"fingerprint": "f", "manifest": str(tokens.commit(num_shards=1))}
    a = scaling_stage(ScalingFlowConfig.model_validate(base), corpus, [])
    b = scaling_stage(
        ScalingFlowConfig.model_validate({**base, "runner": {"kind": "dask", "max_workers": 2}}), corpus, []
    )
    assert a.fingerprint == b.fingerprint


def test_resolve_location_keeps_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_location("outputs") == str(tmp_path.resolve() / "outputs")
    assert resolve_location("s3://bucket/prefix") == "s3://bucket/prefix"


def test_cli_without_server_workers_report_to_the_flows_temporary_server(reference, tmp_path):
    """`lmpipe run` with no PREFECT_API_URL: worker processes must use the flow's temporary
    server, not each start one of their own (their task runs would be recorded there)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(repo), PREFECT_LOGGING_LEVEL="INFO")
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "data",
        "--set",
        f'sources=["{reference / CC / "whirlwind.warc.gz"}"]',
        "--set",
        f"root={tmp_path / 'out'}",
        "--set",
        "filters=null",
        "--set",
        "runner.kind=processes",
        "--set",
        "runner.max_workers=1",
    ]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert log.count("Starting temporary server") == 1, log[-3000:]
    assert "Task run 'extract-00000' - Finished in state Completed()" in log
