"""Helpers of the e2e tests: trigger a deployment by name, talk to the API, tiny configs."""

from __future__ import annotations

import socket
from pathlib import Path

# Tiny input: a few KB of real crawl data from ../shared/reference.
DATA_SOURCE = "commoncrawl/whirlwind.warc.wet.gz"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(server):
    """Prefect client settings for the e2e server: its API and its auth string."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: server.api, PREFECT_API_AUTH_STRING: server.auth})


def run_by_name(server, name: str, parameters: dict, timeout: float = 150, **kw):
    """Trigger a deployment by name (``flow/deployment``) and wait for a final state."""
    from prefect.deployments import run_deployment

    with settings(server):
        return run_deployment(
            name=name, parameters=parameters, timeout=timeout, poll_interval=1, as_subflow=False, **kw
        )


def api_client(server):
    from prefect.client.orchestration import get_client

    with settings(server):
        return get_client(sync_client=True)


# The model-based filters fetch or train models on first use (slow on a fresh machine); these
# tests are about deployments and the UI, so the data stage runs extract, PII and dedup only.
LEAN_FILTERS = {
    "langid": {"enabled": False},
    "rules": {"enabled": False},
    "quality": {"enabled": False},
    "harmful": {"enabled": False},
}  # on by default since the classifiers landed: ~100 s on a fresh cache


def data_config(root: Path, reference: Path) -> dict:
    return {"root": str(root), "sources": [str(reference / DATA_SOURCE)], "max_workers": 1, "filters": LEAN_FILTERS}
