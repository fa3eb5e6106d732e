"""Scale-out end to end: the data flow's shard tasks on Dask worker processes (a LocalCluster
with 2 workers) and its artifact root on S3 (moto's server mode on 127.0.0.1, a real S3 API
over HTTP; the workers get the endpoint and credentials from their environment, as workers
on other machines would). Every stage equals a threads run on a local root.

Needs the object-store artifact root (``lm.data.storage``, issue 11 part 1): skipped without it.
"""

import pytest

pytest.importorskip("lm.data.storage", reason="the fsspec artifact root (lm.data.storage) is not in this tree")
pytest.importorskip("prefect_dask", reason="the dask extra is not installed")

from moto_s3 import BUCKET, moto_s3  # tests/moto_s3.py comes with lm.data.storage

from flows.data import DataConfig, data_flow
from lm.data.shards import read_manifest

CC = "commoncrawl"
FUNNEL = {"quality": {"min_score": 0.0}, "minhash": {"num_hashes": 64, "num_bands": 16, "num_bucket_tasks": 2}}


def _run(reference, root: str, runner: dict) -> dict:
    stages = data_flow(
        config=DataConfig.model_validate(
            {
                "sources": [str(reference / CC / "warcfile.warc.gz"), str(reference / CC / "clueweb-quirk.warc.gz")],
                "root": root,
                "max_workers": 2,
                "filters": FUNNEL,
                "runner": runner,
            }
        )
    )
    out = {}
    for name, path in stages.items():
        m = read_manifest(path)
        out[name] = (
            m["fingerprint"],
            m["counts"],
            [s["sha256"] for s in m["shards"]],
            [s["sha256"] for s in m.get("rejects", [])],
        )
    return out


def test_dask_workers_write_an_s3_root(prefect_harness, reference, tmp_path):
    with moto_s3() as client:  # sets AWS_ENDPOINT_URL and credentials before the workers start
        local = _run(reference, str(tmp_path / "local"), {"kind": "threads"})
        remote = _run(reference, f"s3://{BUCKET}/runners-dask", {"kind": "dask", "max_workers": 2})
        keys = [
            o["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="runners-dask/")
            for o in page.get("Contents", [])
        ]
    assert remote == local
    assert (
        sum(k.endswith("/_manifest.json") for k in keys) == len(local) + 5
    )  # + line_counts/duplicates, minhash helpers
