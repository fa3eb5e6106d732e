"""Two runs on one artifact root, as two real processes (issue #17, item 15).

A run writing a shard holds that shard's lock (``lm.data.locks``): a second run that reaches
the same shard is refused with a message naming the first (pid, host, command), instead of
deleting the first run's live temporary files as "stale" (before: FileNotFoundError in the
first run). A run killed with SIGKILL holds nothing: the next run takes the shard over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from lm.data.shards import Stage, read_manifest, read_stage_table

REPO = Path(__file__).resolve().parents[2]
ROWS = 5000  # more than one Parquet row group: the temporary file is on disk while the writer pauses

_WRITER = textwrap.dedent(f"""
    import sys
    import pyarrow as pa
    from lm.data.shards import Stage
    st = Stage(sys.argv[1], "extract", version="1", config={{"k": 1}})
    with st.open_shard(0, schema=pa.schema([("id", pa.string())]), source=sys.argv[2]) as w:
        for j in range({ROWS}):
            w.count_in()
            w.write({{"id": f"{{sys.argv[2]}}-{{j}}"}})
    print("wrote shard 0")
""")


def _start(root: Path, tag: str, delay_s: float) -> subprocess.Popen:
    env = {**os.environ, "LMPIPE_TEST_SHARD_DELAY_S": str(delay_s)}
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root), tag],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_temporary(stage_dir: Path, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(stage_dir.glob(".part-00000.parquet.*.tmp")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first run never started writing"
        time.sleep(0.05)


def test_a_second_run_is_refused_naming_the_first_and_leaves_its_files_alone(tmp_path, chaos_record):
    root = tmp_path / "root"
    stage = Stage(root, "extract", version="1", config={"k": 1})
    first = _start(root, "first", delay_s=4)
    _wait_for_temporary(stage.path, first)
    second = _start(root, "second", delay_s=0)
    out2, err2 = second.communicate(timeout=120)
    out1, err1 = first.communicate(timeout=120)
    refused = second.returncode != 0 and "StageBusyError" in err2 and f"pid {first.pid}" in err2
    ids = (
        read_stage_table(read_manifest(stage.commit(num_shards=1))).column("id").to_pylist()
        if first.returncode == 0
        else []
    )
    ok = refused and first.returncode == 0 and ids == [f"first-{j}" for j in range(ROWS)]
    leftovers = [p.name for p in stage.path.iterdir() if p.name.startswith(".")] + [
        p.name for p in (root / ".lmpipe-locks").glob("*.lock")
    ]
    chaos_record(
        "a second run writes the same shard",
        "stage contract (two processes)",
        1,
        int(ok and not leftovers),
        note="second refused naming the first's pid; first finished, its files intact",
    )
    assert first.returncode == 0, err1
    assert refused, (second.returncode, err2[-2000:])
    assert "being written by another run" in err2 and "wait for it to finish" in err2.lower()
    assert ids == [f"first-{j}" for j in range(ROWS)]
    assert leftovers == []


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, chaos_record):
    root = tmp_path / "root"
    stage = Stage(root, "extract", version="1", config={"k": 1})
    killed = _start(root, "killed", delay_s=60)
    _wait_for_temporary(stage.path, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    rerun = _start(root, "rerun", delay_s=0)
    _, err = rerun.communicate(timeout=120)
    ok = rerun.returncode == 0 and stage.shard_done(0)
    ids = read_stage_table(read_manifest(stage.commit(num_shards=1))).column("id").to_pylist() if ok else []
    leftovers = [p.name for p in stage.path.iterdir() if p.name.startswith(".")] + [
        p.name for p in (root / ".lmpipe-locks").glob("*.lock")
    ]
    chaos_record(
        "SIGKILL while holding a shard lock",
        "stage contract (two processes)",
        1,
        int(ok and ids == [f"rerun-{j}" for j in range(ROWS)] and not leftovers),
        note="the next run takes the shard over at once; no temporaries or lock files left",
    )
    assert rerun.returncode == 0, err[-2000:]
    assert ids == [f"rerun-{j}" for j in range(ROWS)]
    assert leftovers == []
