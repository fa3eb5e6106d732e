"""Locks that keep two runs on one artifact root from writing the same stage files at once.

Each unit a writer owns — one shard of a stage, a stage's commit, or a whole single-unit
stage (a tokenizer, a training run) — has a lock file outside the stage directories:
``<root>/.lmpipe-locks/<stage>.<fingerprint>.<part>.lock``. The lock is an ``flock(2)`` on
that file: the kernel drops it when its holder exits, however it exits, so the lock of a
killed run is taken over by the next one without any staleness guess (on NFS, by the
server's lock recovery).
While held, the file says who holds it: pid, host, the command line and since when.

A second writer of the same unit is refused at once (or after waiting ``wait_s``) with a
:class:`StageBusyError` naming the other run. Only the holder of a shard's lock clears that
shard's leftover temporaries, so one run never deletes another's live files.

Object-store roots have no such lock: run one writer per stage there (docs/storage.md).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lm.data.nospace import disk_full_error, no_room_errno
from lm.data.storage import RemotePath

try:
    import fcntl
except ImportError:  # Windows: no flock; writers are not coordinated there
    fcntl = None

POLL_S = 0.2
LOCK_DIR = ".lmpipe-locks"


class StageBusyError(RuntimeError):
    """Another live run holds the lock of the stage files this one was about to write."""


def lock_path(stage_dir: Path | RemotePath, part: str) -> Path | RemotePath:
    """``<root>/.lmpipe-locks/<stage>.<fingerprint>.<part>.lock``: a stage directory and its
    ``<root>/<stage>/`` parent hold only what the stage wrote, even after a run was killed."""
    return stage_dir.parent.parent / LOCK_DIR / f"{stage_dir.parent.name}.{stage_dir.name}.{part}.lock"


def holder_info(what: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "what": what,
        "command": " ".join(sys.argv)[:300],
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _describe(info: dict | None, path: Path) -> str:
    if not info:
        return f"another process (it has not written its details yet; lock {path})"
    return (
        f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')} "
        f"(command: {info.get('command')!r}; lock {path})"
    )


def _read_info(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data) if data else None
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if no_room_errno(e) is not None:
            raise disk_full_error(path, e) from e
        if e.errno == errno.ELOOP:
            raise PermissionError(f"lock file {path} is a symbolic link; remove it") from None
        raise


def _try_acquire(path: Path, what: str) -> tuple[int | None, dict | None]:
    """(fd holding the lock, None) or (None, the holder's details)."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        info = _read_info(fd)
        os.close(fd)
        return None, info or {}
    try:  # the previous holder may have removed the file after we opened it: then lock the new one
        same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None, None
    with contextlib.suppress(OSError):  # details are best effort (a full disk must not stop the run here)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder_info(what)).encode(), 0)
    return fd, None


@contextlib.contextmanager
def held(path: Path | RemotePath, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the lock at ``path`` for the block; StageBusyError when another live process holds
    it for longer than ``wait_s`` seconds."""
    if isinstance(path, RemotePath) or fcntl is None:
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if no_room_errno(e) is not None:
            raise disk_full_error(path, e) from e
        raise
    deadline = time.monotonic() + wait_s
    while True:
        fd, info = _try_acquire(path, what)
        if fd is not None:
            break
        if info is not None and time.monotonic() >= deadline:
            raise StageBusyError(
                f"{what} is being written by another run: {_describe(info, path)}. Wait for it to finish (a rerun then "
                "finds the work done), or stop that run; two runs must not write the same stage files at once"
            )
        time.sleep(POLL_S if info is not None else 0)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a waiter that opened this file retries on the new one
        os.close(fd)


def sweep(stage_dir: Path | RemotePath) -> None:
    """Remove lock files of ``stage_dir`` left by killed runs (those nobody holds now)."""
    if isinstance(stage_dir, RemotePath) or fcntl is None:
        return
    for path in lock_path(stage_dir, "x").parent.glob(f"{stage_dir.parent.name}.{stage_dir.name}.*.lock"):
        if path.is_symlink():
            continue
        fd, _ = _try_acquire(path, "sweep")
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.close(fd)
