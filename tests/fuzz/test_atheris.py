"""Runs each atheris (libFuzzer) harness for a bounded time, when atheris is installed.

``LMPIPE_ATHERIS_SECONDS`` per harness: 10 in `make test`, 120 under the soak profile
(``LMPIPE_CHAOS_TRIALS`` > 2 or ``LMPIPE_FUZZ_PROFILE=fuzz-chaos``). Seeds come from the real
fixtures (atheris_seeds.py); ``-timeout`` makes any single input running past 20 s a failure
(a hang), and a crash leaves its input in the test's temporary directory, named in the failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from atheris_seeds import write_seeds
from fuzzkit import profile_name

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _seconds() -> int:
    default = "120" if profile_name() == "fuzz-chaos" else "10"
    return int(os.environ.get("LMPIPE_ATHERIS_SECONDS", default))


@pytest.mark.parametrize("target", ["warc", "html", "tokenizer"])
def test_atheris_harness_runs_clean(target, reference, tmp_path):
    pytest.importorskip(
        "atheris", reason="atheris is not installed (pip install atheris==3.0.0; 3.1.0 is not on this index)"
    )
    corpus, crashes = tmp_path / "corpus", tmp_path / "crashes"
    crashes.mkdir()
    env = {**os.environ, "LMPIPE_REFERENCE": str(reference), "PYTHONPATH": str(REPO)}
    assert write_seeds(target, corpus) > 0
    seconds = _seconds()
    cmd = [
        sys.executable,
        str(HERE / f"atheris_{target}.py"),
        f"-max_total_time={seconds}",
        "-timeout=20",
        "-rss_limit_mb=4096",
        f"-artifact_prefix={crashes}/",
        str(corpus),
    ]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=seconds + 120)
    out = p.stdout + p.stderr
    found = sorted(c.name for c in crashes.iterdir())
    assert p.returncode == 0 and not found, (
        f"atheris_{target} exit {p.returncode}, crash inputs {found} in {crashes}:\n{out[-4000:]}"
    )
    runs = [ln for ln in out.splitlines() if ln.startswith("Done ") and " runs in " in ln]
    assert runs and int(runs[-1].split()[1]) > 0, out[-2000:]
    print(f"atheris_{target}: {runs[-1]}")
