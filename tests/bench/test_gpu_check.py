"""bench/gpu_check.sh is valid bash, documents its parts, and refuses to run without a GPU (unless --cpu-smoke).

The script itself is run on a GPU machine (or with --cpu-smoke, ~3 minutes on 2 cores: too long
for the suite); docs/pretrain.md records its last run.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def test_gpu_check_parses_and_says_what_it_does():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for part in ("tests", "kernels", "models", "strategies", "--cpu-smoke"):
        assert part in out.stdout


def test_gpu_check_without_a_gpu_stops_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run")
    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils' timeout")
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert out.returncode == 2 and "no CUDA GPU visible" in out.stderr
    assert not (tmp_path / "parts.jsonl").read_text()  # no part ran
    bad = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr
