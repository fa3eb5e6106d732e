"""Shared pieces of the fuzz suite: the active hypothesis profile and a per-example wall limit."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import settings

CHAOS_FACTOR = 20  # examples per target under the soak, relative to CI


def profile_name() -> str:
    name = os.environ.get("LMPIPE_FUZZ_PROFILE")
    if name:
        return name
    trials = os.environ.get("LMPIPE_CHAOS_TRIALS", "2")
    return "fuzz-chaos" if trials.isdigit() and int(trials) > 2 else "fuzz-ci"


def fuzz_settings(ci_examples: int) -> settings:
    """Settings for one fuzz target: ``ci_examples`` examples in CI, ``CHAOS_FACTOR`` times more in the soak."""
    name = profile_name()
    n = ci_examples * (CHAOS_FACTOR if name == "fuzz-chaos" else 1)
    return settings(settings.get_profile(name), max_examples=n)


# Generous: the slowest honest example (a 300 KB WARC read byte by byte) takes well under a
# second; a hang is an unbounded loop, which this catches whatever the machine load.
WALL_LIMIT_S = float(os.environ.get("LMPIPE_FUZZ_WALL_LIMIT_S", "20"))


def call_with_timeout(fn, *args, timeout: float = WALL_LIMIT_S, **kwargs):
    """``fn(*args, **kwargs)`` in a worker thread; fail the test if it runs past ``timeout``.

    A thread (not signal.alarm) so that a loop inside C code (resiliparse, zlib, tiktoken) is
    caught too: the worker is left behind (daemon), the example fails as a hang.
    """
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True, name=f"fuzz-{getattr(fn, '__name__', 'call')}")
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"hang: {getattr(fn, '__name__', fn)} ran past the {timeout:.0f} s wall limit on this example")
    if "error" in box:
        raise box["error"]
    return box.get("value")
