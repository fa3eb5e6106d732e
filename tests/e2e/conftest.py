"""One real Prefect server + cpu/gpu process workers on loopback, shared by the e2e tests.

Starting a server is the slow part (database migrations, ~20 s on 2 cores), so it is
session-scoped; so are the registered deployments and the flow runs the tests inspect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.server import REPO, api_url, child_env, deploy
from tests.e2e.helpers import free_port


@dataclass
class Server:
    api: str
    ui: str
    log_dir: Path
    auth: str  # the basic-auth string `lmpipe server` generated (in log_dir/lmpipe-auth)
    files: str  # the artifact file server's base URL
    allowed_root: Path  # runs may write only under it
    pid: int


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}  # a zombie has exited; only its parent's wait is missing


@pytest.fixture(scope="session")
def local_prefect(tmp_path_factory) -> Server:
    """`lmpipe server` itself, as a user starts it; stopped with Ctrl-C (SIGINT) at the end,
    which must leave no server, worker or flow-run process behind."""
    home = tmp_path_factory.mktemp("prefect-server")
    port, files_port = free_port(), free_port()
    allowed = tmp_path_factory.getbasetemp()  # every test's tmp_path may be a root
    env = child_env(
        extra={
            # Its own PREFECT_HOME (SQLite), apart from the prefect_harness server; workers poll
            # every second so a run starts at once.
            "PREFECT_HOME": str(home),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            # The scheduler looks for due schedules every 5 s instead of 60 (tests/e2e/test_schedules.py).
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        }
    )
    log = open(home / "lmpipe-server.log", "wb")
    env.pop("PREFECT_API_AUTH_STRING", None)  # the server generates its own secret
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "server",
            "--port",
            str(port),
            "--files-port",
            str(files_port),
            "--allow-root",
            str(allowed),
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while b"Ctrl-C stops everything" not in (home / "lmpipe-server.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"lmpipe server did not come up: {(home / 'lmpipe-server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    auth = (home / "lmpipe-auth").read_text().strip()
    server = Server(
        api_url("127.0.0.1", port),
        f"http://127.0.0.1:{port}",
        home,
        auth,
        f"http://127.0.0.1:{files_port}",
        allowed,
        proc.pid,
    )
    yield server

    kids = descendants(proc.pid)
    assert len(kids) >= 3, f"expected a server and two workers under lmpipe server, found {kids}"
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    try:
        rc = proc.wait(60)
    finally:
        log.close()
    left = sorted(p for p in kids if alive(p))
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert rc == 0 and not left, f"lmpipe server exited {rc} and left {left} running; see {home}/lmpipe-server.log"


@pytest.fixture(scope="session")
def deployed(local_prefect) -> str:
    """Register the deployments of deployments/prefect.yaml; returns `prefect deploy`'s output."""
    return deploy(local_prefect.api, env={"PREFECT_API_AUTH_STRING": local_prefect.auth})
