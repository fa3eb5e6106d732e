"""Test-wide environment: a private Prefect home, no telemetry, Triton's CPU interpreter."""

import os
import tempfile
from pathlib import Path

# These must be set before prefect or triton is imported anywhere.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="lmpipe-prefect-"))
if worker := os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers: one Prefect home each
    os.environ["PREFECT_HOME"] = os.path.join(os.environ["PREFECT_HOME"], worker)
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
# Fault trials record their rows in this file (workers inherit it), printed at the end.
if "LMPIPE_CHAOS_REPORT" not in os.environ:
    os.environ["LMPIPE_CHAOS_REPORT"] = os.path.join(tempfile.mkdtemp(prefix="lmpipe-chaos-"), "chaos.jsonl")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from chaos_report import format_table, load  # tests/ is on sys.path (rootdir conftest)

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LMPIPE_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference() -> Path:
    """../shared/reference: real CS336 fixtures and Common Crawl samples (read in place)."""
    if not REFERENCE.is_dir():
        raise FileNotFoundError(
            f"reference fixtures not found at {REFERENCE}; set LMPIPE_REFERENCE to the shared/reference folder"
        )
    return REFERENCE


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_terminal_summary(terminalreporter):
    """The reliability report: every fault trial's row, from whichever worker ran it."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not os.path.isfile(os.environ["LMPIPE_CHAOS_REPORT"]):
        return
    terminalreporter.write_sep("=", "reliability report")
    terminalreporter.write_line(format_table(load(os.environ["LMPIPE_CHAOS_REPORT"])))
