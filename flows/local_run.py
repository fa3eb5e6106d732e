"""Running a flow from the terminal (``lmpipe run``, ``lmpipe demo``): a temporary Prefect
server that goes last, and a Ctrl-C or SIGTERM that stops everything within seconds.

Without ``PREFECT_API_URL``, Prefect would start its own temporary server as a child in our
process group: the terminal's Ctrl-C reached it first, the flow then could not report its
state (the run stayed ``Running``), and every queued event waited ~7 s on the dead API before
the process exited (282 s once). So :func:`temporary_server` starts that server itself, in
its own session (the terminal's Ctrl-C does not reach it), with a one-off auth string, and
stops it only after the flow has ended.

:func:`run_flow` runs the flow under it. On the first SIGINT/SIGTERM, the flow is interrupted
(Prefect marks the run Crashed: "aborted by an interrupt/termination signal"), and a watchdog
makes sure of the rest within ``grace`` seconds even when a shard's thread is blocked in I/O:
it marks the run Crashed itself if Prefect has not, stops the server, and exits (130 for
SIGINT, 143 for SIGTERM). Nothing is half-written: shards appear only by atomic rename with
their marker after them, so an interrupted shard leaves at most a hidden temporary file that
the next run removes, and the rerun redoes only the missing shards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

GRACE_S = 5.0  # after a signal: time for the orderly stop before the watchdog takes over


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TemporaryServer:
    """``uvicorn prefect.server.api.server:create_app`` on a free loopback port, in its own session."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.auth = f"lmpipe:{secrets.token_urlsafe(24)}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> None:
        import prefect

        from flows.server import die_with_parent, child_env, wait_healthy

        env = child_env(None, {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                               "PREFECT_SERVER_API_AUTH_STRING": self.auth})
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT_API_AUTH_STRING", None)
        cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
               "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "error", "--lifespan", "on"]
        self.proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent)
        wait_healthy(self.api, self.proc, timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def temporary_server() -> Iterator[TemporaryServer | None]:
    """A temporary API for this command unless ``PREFECT_API_URL`` names one; stopped last."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield None
        return
    server = TemporaryServer()
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    try:
        server.start(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        # Settings for this process, the environment for its children (process-pool tasks).
        os.environ.update(PREFECT_API_URL=server.api, PREFECT_API_AUTH_STRING=server.auth)
        with temporary_settings(updates={PREFECT_API_URL: server.api, PREFECT_API_AUTH_STRING: server.auth}):
            yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


class _Interrupted:
    """What the first signal saw, and how to find this command's flow runs."""

    def __init__(self) -> None:
        self.signum: int | None = None  # set by the watchdog (any handler), or our handler
        self.raised = False  # our handler raised KeyboardInterrupt once
        self.server: TemporaryServer | None = None
        self.settings: dict = {}  # the API this command talks to (a thread has no settings context)
        self.tag = f"lmpipe-run-{secrets.token_hex(4)}"  # on every flow run this command creates

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def _mark_crashed(state: _Interrupted) -> None:
    """Crashed, for every unfinished flow run of this command (its tag: the flow and its
    subflows), unless Prefect's own handling got there first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
    from prefect.client.schemas.objects import StateType
    from prefect.settings import temporary_settings
    from prefect.states import Crashed

    unfinished = FlowRunFilter(tags=FlowRunFilterTags(all_=[state.tag]), state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED])))
    with temporary_settings(updates=state.settings), get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=unfinished):
            client.set_flow_run_state(run.id, Crashed(message=f"Execution was aborted by {state.name} (lmpipe)"), force=True)


def _say_stopped(state: _Interrupted) -> None:
    print(f"lmpipe: stopped by {state.name}; the run is marked Crashed, finished shards are kept and a rerun "
          "redoes the rest", file=sys.stderr, flush=True)


def _watchdog(state: _Interrupted, read_fd: int, grace: float) -> None:
    """Sees every signal through the wakeup fd (whichever Python handler is installed: Prefect
    swaps in its own for SIGTERM during a flow). After the first SIGINT/SIGTERM it gives the
    orderly stop ``grace`` s, then abandons whatever still runs (a shard blocked in I/O)."""
    import time

    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            data = b""
        if not data:
            os.close(read_fd)
            return
        sig = next((b for b in data if b in (signal.SIGINT, signal.SIGTERM)), None)
        if sig is not None:
            break
    state.signum = state.signum or sig
    time.sleep(grace)
    with contextlib.suppress(Exception):
        _mark_crashed(state)
    with contextlib.suppress(Exception):
        if state.server is not None:
            state.server.stop()
    _say_stopped(state)
    os._exit(state.exit_code)


def run_flow(call: Callable[[], Any], grace: float = GRACE_S) -> Any:
    """``call()`` (a flow call) on a temporary server, stopping cleanly on SIGINT/SIGTERM."""
    state = _Interrupted()

    def on_signal(signum, frame):
        state.signum = state.signum or signum
        if state.raised:
            return  # a second Ctrl-C does not interrupt the orderly stop; the watchdog is running
        state.raised = True
        raise KeyboardInterrupt(signal.Signals(signum).name)

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watchdog, args=(state, read_fd, grace), name="lmpipe-stop-watchdog", daemon=True).start()
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with temporary_server() as server:
            from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

            state.server = server
            state.settings = {PREFECT_API_URL: PREFECT_API_URL.value(), PREFECT_API_AUTH_STRING: PREFECT_API_AUTH_STRING.value()}
            try:
                from prefect import tags

                with tags(state.tag):
                    return call()
            except BaseException:
                if state.signum is None:
                    raise
                with contextlib.suppress(Exception):
                    _mark_crashed(state)  # while the server is still up
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)
        os.close(write_fd)  # ends the watchdog's read when nothing happened
    # Interrupted, and the flow unwound within the grace period; the server has stopped.
    # Threads still busy in a shard would hold the interpreter's exit: leave now.
    _say_stopped(state)
    os._exit(state.exit_code)
