import pytest
from fault_http import FaultServer  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture
def fault_server():
    """A 127.0.0.1 HTTP server with injected faults (see tests/fault_http.py)."""
    s = FaultServer()
    yield s
    s.close()
