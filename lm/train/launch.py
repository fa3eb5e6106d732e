"""Launch `python -m lm.train` under torchrun and supervise it: stream rank 0's log, enforce a
timeout, and leave no process behind on timeout, cancellation or error.

The pretrain task calls `run_torchrun(launch, ["--config", path])`; a retry runs the same
command again and the trainer resumes from the newest checkpoint in its out_dir.

    single node, all local GPUs (or 1 process on CPU):
        python -m torch.distributed.run --standalone --nproc-per-node N -m lm.train --config c.yaml
    multi-node (run the same command on every node; c10d rendezvous on node 0's host:port):
        python -m torch.distributed.run --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
            --rdzv-endpoint node0:29400 --rdzv-id run-42 -m lm.train --config c.yaml

Process hygiene: torchrun starts each rank in a session of its own, so killing torchrun's
process group does not reach the ranks. On timeout we send SIGTERM to torchrun (it forwards
it to the ranks), wait `kill_grace_s`, then SIGKILL torchrun's group and every descendant
recorded before and after the SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from lm.config import Config


class LaunchTimeout(TimeoutError):
    """The training command ran past `timeout_s` and was killed with all its processes."""


class LaunchFailed(RuntimeError):
    """torchrun exited non-zero; the message holds the tail of its log."""

    def __init__(self, returncode: int, tail: str):
        super().__init__(f"torchrun exited with status {returncode}; last lines:\n{tail}")
        self.returncode = returncode


class LaunchConfig(Config):
    """How many processes run the trainer, and where (torchrun's arguments)."""

    nproc_per_node: int | Literal["auto"] = Field(
        "auto",
        description=(
            "Processes per node: 'auto' = one per visible GPU (1 without "
            "GPUs), or a number (e.g. 2 CPU processes for a gloo test)."
        ),
    )
    nnodes: str = Field(
        "1", description="Number of nodes, or 'MIN:MAX' for elastic membership; above 1 needs rdzv_endpoint."
    )
    rdzv_endpoint: str | None = Field(
        None,
        description=(
            "host:port of the c10d rendezvous (any reachable node, usually "
            "node 0) for multi-node runs; unset = single node (--standalone)."
        ),
    )
    rdzv_id: str = Field(
        "lmpipe", description="Rendezvous id: the same on every node of one job, different between concurrent jobs."
    )
    max_restarts: int = Field(
        0, ge=0, description="torchrun's own restarts of failed ranks before giving up (Prefect retries come on top)."
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Kill the whole run (every rank) after this many seconds; unset = no limit."
    )
    kill_grace_s: float = Field(10.0, ge=0, description="Seconds between SIGTERM and SIGKILL when stopping a run.")
    omp_num_threads: int | None = Field(
        None, gt=0, description="OMP_NUM_THREADS for each rank (CPU runs: cores / processes)."
    )

    @field_validator("nproc_per_node")
    @classmethod
    def _nproc(cls, v):
        if v != "auto" and v < 1:
            raise ValueError(f"nproc_per_node={v} must be ≥ 1 or 'auto'")
        return v

    @field_validator("nnodes")
    @classmethod
    def _nnodes(cls, v: str) -> str:
        parts = v.split(":")
        if len(parts) > 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"nnodes={v!r} must be a positive number or 'MIN:MAX'")
        return v

    def processes_per_node(self) -> int:
        if self.nproc_per_node == "auto":
            return max(1, torch.cuda.device_count())
        return self.nproc_per_node

    def check_batch(self, batch_size: int) -> None:
        """The global batch must split evenly over the ranks (checked when the world size is
        fixed by the config; 'auto' and elastic node counts are checked by the trainer)."""
        if self.nproc_per_node == "auto" or ":" in self.nnodes:
            return
        world = self.nproc_per_node * int(self.nnodes)
        if batch_size % world:
            raise ValueError(
                f"train.batch_size={batch_size} must be divisible by the world size "
                f"{world} (nproc_per_node × nnodes); each rank takes batch_size / world_size sequences"
            )

    def max_world_size(self) -> int:
        return int(self.nnodes.split(":")[-1]) * self.processes_per_node()

    def multi_node(self) -> bool:
        return self.nnodes != "1"


def torchrun_command(launch: LaunchConfig, module: str, args: list[str]) -> list[str]:
    """The command line that runs `python -m <module> <args>` under torchrun."""
    if launch.multi_node() and not launch.rdzv_endpoint:
        raise ValueError(
            f"nnodes={launch.nnodes!r} needs rdzv_endpoint (host:port of the rendezvous, e.g. node0:29400)"
        )
    # --local-ranks-filter=0: only local rank 0 reaches our stdout. The trainer's other ranks
    # are quiet anyway, but warnings would otherwise arrive once per rank.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={launch.processes_per_node()}",
        f"--max-restarts={launch.max_restarts}",
        "--local-ranks-filter=0",
    ]
    if launch.rdzv_endpoint:
        cmd += [
            f"--nnodes={launch.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.rdzv_endpoint}",
            f"--rdzv-id={launch.rdzv_id}",
        ]
    else:
        cmd += ["--standalone"]  # a free local port: concurrent runs on one machine do not collide
    return cmd + ["-m", module, *args]


# ----------------------------------------------------------------------------- supervision


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc (Linux) or `ps` (elsewhere)."""
    tree: dict[int, list[int]] = {}
    if Path("/proc").is_dir():
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4; the name in () may hold spaces
            tree.setdefault(ppid, []).append(int(entry.name))
        return tree
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, ppid = map(int, line.split())
        tree.setdefault(ppid, []).append(pid)
    return tree


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_process_tree(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the tree (torchrun forwards it to its ranks), then SIGKILL what is left."""
    if proc.poll() is not None and not descendants(proc.pid):
        return
    family = descendants(proc.pid)
    _kill({proc.pid}, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    family |= descendants(proc.pid)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(_alive(p) for p in family):
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's own group (it was started as a session leader)
    except (ProcessLookupError, PermissionError):
        pass
    _kill({p for p in family if _alive(p)}, signal.SIGKILL)
    proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited already; only its parent's wait() removes it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def run_supervised(
    cmd: list[str],
    *,
    on_line: Callable[[str], None] = print,
    timeout_s: float | None = None,
    kill_grace_s: float = 10.0,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> list[str]:
    """Run `cmd`, pass each output line to `on_line`, return the last 200 lines.

    Raises LaunchTimeout past `timeout_s`, LaunchFailed on a non-zero exit; in every case,
    KeyboardInterrupt and cancellation included, no process of the tree survives.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    tail: deque[str] = deque(maxlen=200)

    def pump() -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    finished = False
    try:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise LaunchTimeout(f"training ran past timeout_s={timeout_s}s; every process was stopped") from None
        finished = True
    finally:
        if not finished:
            stop_process_tree(proc, kill_grace_s)
        reader.join(timeout=5)
    if proc.returncode != 0:
        raise LaunchFailed(proc.returncode, "\n".join(list(tail)[-40:]))
    return list(tail)


def run_torchrun(
    launch: LaunchConfig,
    args: list[str],
    *,
    module: str = "lm.train",
    on_line: Callable[[str], None] = print,
    cwd: str | None = None,
) -> dict | None:
    """Run `python -m <module> <args>` under torchrun; return the JSON summary it printed last
    (lm.train prints one), or None."""
    env = dict(os.environ)
    if launch.omp_num_threads:
        env["OMP_NUM_THREADS"] = str(launch.omp_num_threads)
    cmd = torchrun_command(launch, module, args)
    tail = run_supervised(
        cmd, on_line=on_line, timeout_s=launch.timeout_s, kill_grace_s=launch.kill_grace_s, env=env, cwd=cwd
    )
    for line in reversed(tail):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None
