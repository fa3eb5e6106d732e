"""Ctrl-C and SIGTERM in the middle of a stage, on a real `lmpipe run` process.

The input trickles in from a local HTTP server (a few bytes every half second), so the
extract shard is mid-read, its thread blocked in a socket, when the signal arrives. Before
flows/local_run.py, Ctrl-C killed Prefect's temporary server first; the flow then spent ~7 s
per queued event on the dead API (282 s to exit once) and left the run `Running`.

Ctrl-C goes to a run on its own temporary server (which must outlive the flow); SIGTERM to a
run against the session's `lmpipe server` (where the run is found by the command's tag).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from flows.server import REPO
from tests.e2e.conftest import alive, descendants
from tests.e2e.helpers import api_client
from tests.fault_http import FaultServer

pytestmark = pytest.mark.slow


@pytest.fixture
def server_or_none(request):
    """ctrl-c: `lmpipe run` on its own temporary server; sigterm: against the `lmpipe server`."""
    return request.getfixturevalue("local_prefect") if request.param == "sigterm" else None


@pytest.mark.parametrize(
    "how,server_or_none", [("ctrl-c", "ctrl-c"), ("sigterm", "sigterm")], indirect=["server_or_none"]
)
def test_signal_mid_stage_stops_within_seconds_marks_the_run_and_leaves_nothing_half_written(
    how, server_or_none, reference, tmp_path
):
    server = server_or_none
    fault = FaultServer()
    data = (reference / "commoncrawl" / "warcfile.warc.gz").read_bytes()
    url = fault.add("/slow.warc.gz", data, ["slow:64:0.5"])  # ~3 minutes for the whole body
    root, home = tmp_path / "out", tmp_path / "prefect-home"
    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "sources": [url],
                "root": str(root),
                "max_workers": 1,
                "filters": None,
                "http": {"retries": 0, "backoff_s": 0.1, "timeout_s": 60},
            }
        )
    )
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO)}
    for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(k, None)
    if server is not None:
        env.update(PREFECT_API_URL=server.api, PREFECT_API_AUTH_STRING=server.auth)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        # Its own process group, as a shell gives a foreground job: Ctrl-C reaches the group.
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "data", "--config", str(cfg)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while not any(p == "/slow.warc.gz" for p, _ in fault.log):  # the shard is reading
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(1.0)
            kids = descendants(proc.pid)
            t0 = time.monotonic()
            if how == "ctrl-c":
                os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
            else:
                os.kill(proc.pid, signal.SIGTERM)  # what `kill`, systemd or a batch scheduler does
            rc = proc.wait(60)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            fault.close()
    text = log.read_text(errors="replace")
    assert took < 20, f"took {took:.1f} s to stop:\n{text[-3000:]}"
    assert rc == (130 if how == "ctrl-c" else 143), (rc, text[-3000:])
    time.sleep(0.5)
    left = [p for p in kids if alive(p)]
    assert not left, f"left running: {left}"  # the temporary server went too (last)
    if server is None:
        with sqlite3.connect(home / "prefect.db") as db:
            states = [s for (s,) in db.execute("select state_type from flow_run")]
    else:
        with api_client(server) as client:
            states = [
                r.state_type.value
                for r in client.read_flow_runs(limit=200)
                if r.parameters.get("config", {}).get("root") == str(root)
            ]
    assert states and set(states) <= {"CRASHED", "CANCELLED"}, states
    # Nothing half-written: no manifest, and every visible shard file has its marker.
    assert not list(root.glob("*/*/_manifest.json"))
    for part in root.glob("*/*/part-*.parquet"):
        assert part.with_name(part.name.split(".")[0] + ".done.json").exists(), part
