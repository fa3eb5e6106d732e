"""In a child process started with read_audit.subprocess_env(): record its reads (tests only)."""

import os
import sys

if os.environ.get("LMPIPE_TEST_READ_LOG"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import read_audit

    read_audit.start_child()
