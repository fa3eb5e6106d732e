"""SIGKILL the data flow mid-stage; the rerun must finish exactly like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from flows.data import DataConfig, data_flow
from lm.data.shards import accounted, read_manifest

REPO = Path(__file__).resolve().parents[2]
CC = "commoncrawl"


def _config(reference, root) -> dict:
    cfg = {
        "sources": [str(reference / CC / "warcfile.warc.gz"), str(reference / CC / "clueweb-quirk.warc.gz")],
        "root": str(root),
        "max_workers": 1,
        "extract": {"slice_bytes": 20_000},  # 7 + 14 = 21 shards
    }
    if "filters" in DataConfig.model_fields:  # this test is about the extract stage
        cfg["filters"] = None
    return cfg


def _outputs(stage_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stage_dir.glob("*.parquet"))}


def test_sigkill_mid_stage_then_rerun(prefect_harness, reference, tmp_path):
    from prefect.settings import PREFECT_API_URL

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(reference, tmp_path / "killed")))
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "LMPIPE_TEST_SHARD_DELAY_S": "0.4",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "data", "--config", str(cfg_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "killed").glob("extract/*/part-*.done.json")):
            assert proc.poll() is None, "the flow ended before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (stage_dir,) = (tmp_path / "killed" / "extract").iterdir()
    done = sorted(stage_dir.glob("part-*.done.json"))
    assert 1 <= len(done) < 21 and not (stage_dir / "_manifest.json").exists()
    finished_before = {p.name: p.stat().st_mtime_ns for p in done}

    # Rerun in this process: only the missing shards are computed.
    out = data_flow(config=DataConfig.model_validate(_config(reference, tmp_path / "killed")))
    assert Path(out["extract"]).parent == stage_dir
    assert {p.name: p.stat().st_mtime_ns for p in done} == finished_before

    # An uninterrupted run elsewhere gives the same fingerprint and byte-identical shards.
    clean = data_flow(config=DataConfig.model_validate(_config(reference, tmp_path / "clean")))
    clean_dir = Path(clean["extract"]).parent
    assert clean_dir.name == stage_dir.name
    assert _outputs(stage_dir) == _outputs(clean_dir)
    m_killed, m_clean = read_manifest(out["extract"]), read_manifest(clean["extract"])
    assert m_killed["counts"] == m_clean["counts"] and accounted(m_killed)
    assert m_killed["counts"]["in"] == 50 + 30
    assert [s["sha256"] for s in m_killed["shards"]] == [s["sha256"] for s in m_clean["shards"]]
    strip = lambda m: {
        k: v
        for k, v in json.loads(m.read_text()).items()
        if k not in ("seconds", "finished_at", "marker_sha256", "marker_hmac")
    }
    assert [strip(p) for p in sorted(stage_dir.glob("*.done.json"))] == [
        strip(p) for p in sorted(clean_dir.glob("*.done.json"))
    ]
