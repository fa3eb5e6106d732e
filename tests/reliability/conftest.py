"""Fixtures for the fault-injection suite: trial count and the reliability report's recorder
(tests/conftest.py prints the report)."""

import pytest
from chaos_report import chaos_trials, record  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture(scope="session")
def trials() -> int:
    """Trials per fault: ``LMPIPE_CHAOS_TRIALS`` (2 in `make test`, more under `make chaos`)."""
    return chaos_trials()


@pytest.fixture
def chaos_record():
    """``chaos_record(fault, stage, trials, survived, lost=0, duplicated=0, note="")``.

    Call it before asserting, so a failed trial still appears in the report table.
    """
    return record
