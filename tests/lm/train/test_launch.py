"""The torchrun launcher: command lines, and no process survives a timeout or a cancellation."""

import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

from lm.train.launch import (
    LaunchConfig,
    LaunchFailed,
    LaunchTimeout,
    run_supervised,
    run_torchrun,
    torchrun_command,
)

REPO = Path(__file__).resolve().parents[3]


def _pids_with(marker: str) -> set[int]:
    """Live (non-zombie) processes whose command line mentions `marker`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.add(int(entry.name))
    return found


def _wait_for_pids(marker: str, n: int, timeout_s: float = 10.0) -> set[int]:
    """The processes mentioning `marker`, once at least `n` are visible (a loaded machine may
    show a just-started child a moment late)."""
    import time

    deadline = time.monotonic() + timeout_s
    while len(found := _pids_with(marker)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_single_node_and_multi_node_commands():
    cmd = torchrun_command(LaunchConfig(nproc_per_node=2), "lm.train", ["--config", "c.yaml"])
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--max-restarts=0",
        "--local-ranks-filter=0",
        "--standalone",
        "-m",
        "lm.train",
        "--config",
        "c.yaml",
    ]
    multi = LaunchConfig(nproc_per_node=8, nnodes="2", rdzv_endpoint="node0:29400", rdzv_id="run-42")
    cmd = torchrun_command(multi, "lm.train", [])
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=run-42"} <= set(cmd)
    assert "--standalone" not in cmd and multi.max_world_size() == 16
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command(LaunchConfig(nproc_per_node=8, nnodes="2"), "lm.train", [])
    with pytest.raises(ValueError, match="nnodes"):
        LaunchConfig(nnodes="two")
    with pytest.raises(ValueError, match="batch_size=6 must be divisible by the world size 4"):
        LaunchConfig(nproc_per_node=2, nnodes="2").check_batch(6)


# A stand-in for torchrun's process layout: a parent whose workers each sit in a session of
# their own (so killing the parent's process group alone would orphan them).
TREE = textwrap.dedent("""
    import subprocess, sys, time
    sleep = [sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]]
    kids = [subprocess.Popen(sleep, start_new_session=True) for _ in range(2)]
    print("workers up", flush=True)
    time.sleep(600)
""")


def test_timeout_kills_workers_in_their_own_sessions(tmp_path):
    marker = f"lmpipe-test-{tmp_path.name}"
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    seen = []
    up = threading.Event()

    def on_line(line):
        if line == "workers up":
            seen.extend(_wait_for_pids(marker, 3))
            up.set()

    with pytest.raises(LaunchTimeout):
        run_supervised([sys.executable, str(script), marker], on_line=on_line, timeout_s=5, kill_grace_s=1)
    assert up.is_set() and len(seen) >= 3  # the parent and its two workers were running
    assert _pids_with(marker) == set()


def test_cancellation_kills_the_tree(tmp_path):
    """A cancelled flow run reaches the task as an exception in the waiting thread (here a
    KeyboardInterrupt); the tree must go down with it."""
    import _thread

    marker = f"lmpipe-cancel-{tmp_path.name}"
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    seen = []

    def on_line(line):
        if line == "workers up":
            seen.extend(_wait_for_pids(marker, 3))
            _thread.interrupt_main()

    # interrupt_main raises KeyboardInterrupt only through Python's own SIGINT handler; an
    # earlier test (or a library it loaded) may have replaced it, so install it for this test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_supervised([sys.executable, str(script), marker], on_line=on_line, timeout_s=120, kill_grace_s=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(seen) >= 3
    assert _pids_with(marker) == set()


def test_nonzero_exit_raises_with_the_log_tail():
    with pytest.raises(LaunchFailed, match="boom") as err:
        run_supervised([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], on_line=lambda line: None)
    assert err.value.returncode == 3


def test_torchrun_timeout_leaves_no_rank_alive(byte_shards, tmp_path):
    """Two real gloo ranks training; the timeout fires mid-run; afterwards nothing survives."""
    run = tmp_path / "run"
    cfg = dict(
        model=dict(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=96),
        data=str(byte_shards),
        out_dir=str(run),
        batch_size=4,
        max_steps=100_000,
        lr=1e-3,
        log_interval=1,
        eval_interval=100_000,
        checkpoint_interval=100_000,
        device="cpu",
        strategy="ddp",
    )
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    marker = str(cfg_path)
    seen, lines = [], []

    def on_line(line):
        lines.append(line)
        if line.startswith("step 2/") and not seen:
            seen.extend(_wait_for_pids(marker, 3))

    # A loaded machine may take a while to start torch in three processes: lengthen the timeout
    # until the ranks got to training before it fired (every attempt is killed: max_steps is out of reach).
    for timeout in (20, 60):
        lines.clear()
        launch = LaunchConfig(nproc_per_node=2, timeout_s=timeout, kill_grace_s=3, omp_num_threads=1)
        with pytest.raises(LaunchTimeout):
            run_torchrun(launch, ["--config", str(cfg_path)], on_line=on_line, cwd=str(REPO))
        if seen:
            break
    assert len(seen) >= 3, "torchrun and 2 ranks should have been training; log:\n" + "\n".join(lines[-20:])
    assert _pids_with(marker) == set()
    assert sum("step 1/" in line for line in lines) == 1  # rank 0's log only
