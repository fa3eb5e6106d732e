"""One real Prefect server + cpu/gpu process workers on loopback, shared by the e2e tests.

Starting a server is the slow part (database migrations, ~20 s on 2 cores), so it is
session-scoped; so are the registered deployments and the flow runs the tests inspect.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.server import LocalPrefect, deploy
from tests.e2e.helpers import data_config, free_port, run_by_name


@pytest.fixture(scope="session")
def local_prefect(tmp_path_factory) -> LocalPrefect:
    home = tmp_path_factory.mktemp("prefect-server")
    lp = LocalPrefect(
        host="127.0.0.1",
        port=free_port(),
        log_dir=home / "logs",
        # Its own PREFECT_HOME (SQLite), apart from the prefect_harness server; workers poll
        # every second so a run starts at once.
        env={"PREFECT_HOME": str(home), "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"},
    )
    with lp:
        yield lp
    # Kept for a failing test's post-mortem: <tmp>/prefect-server0/logs/{server,worker-cpu,worker-gpu}.log


@pytest.fixture(scope="session")
def deployed(local_prefect) -> str:
    """Register the deployments of deployments/prefect.yaml; returns `prefect deploy`'s output."""
    return deploy(local_prefect.api)


@pytest.fixture(scope="session")
def pipeline_run(local_prefect, deployed, reference, tmp_path_factory):
    """The `pipeline` deployment run once (data stage on the tiny input), for the UI tests."""
    root = tmp_path_factory.mktemp("pipeline-outputs")
    params = {"config": {"root": str(root), "stages": {"data": data_config(root, reference)}}}
    run = run_by_name(local_prefect.api, "pipeline/pipeline", params)
    return run, root
