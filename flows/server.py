"""A local Prefect server with one worker per work pool, and deployment registration.

    lmpipe server                      # UI and API on http://127.0.0.1:4200, SQLite under PREFECT_HOME
    lmpipe server --database-url postgresql+asyncpg://user:pw@db:5432/prefect
    lmpipe deploy                      # register deployments/prefect.yaml against the running server

``lmpipe server`` runs three child processes, each in its own process group so that one
signal reaches everything it spawned: ``prefect server start`` and ``prefect worker start``
for the ``cpu`` and ``gpu`` pools (both ``process`` pools here: a worker on a GPU machine
serves ``gpu``; ``deployments/k8s-gpu-job-template.json`` shows a Kubernetes pool instead).
Ctrl-C or SIGTERM stops the workers first (they hand back their runs), then the server.

The server binds 127.0.0.1 unless ``--host`` says otherwise: it has no authentication,
so exposing it is a decision a person makes explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flows.registry import expanded_prefect_file

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
# Work pools the deployments route to: data stages on cpu, training stages on gpu.
POOLS: dict[str, str] = {"cpu": "process", "gpu": "process"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def prefect_cmd(*args: str) -> list[str]:
    """The Prefect CLI of this interpreter (so the venv's Prefect, whatever is on PATH)."""
    return [sys.executable, "-m", "prefect", *args]


def api_url(host: str, port: int) -> str:
    h = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    return f"http://{h}:{port}/api"


def child_env(api: str | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Prefect children: this one, plus the API URL and the repo importable.

    The repo goes on PYTHONPATH and in LMPIPE_REPO because a process worker runs each flow
    in a fresh interpreter that must import ``flows``/``tasks``/``lm`` from this checkout,
    and the deployments' pull step changes into ``$LMPIPE_REPO``.
    """
    env = dict(os.environ)
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["LMPIPE_REPO"] = str(REPO)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if api:
        env["PREFECT_API_URL"] = api
    env.update(extra or {})
    return env


def is_healthy(api: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_healthy(api: str, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Block until ``GET /api/health`` answers; fail early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(api):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode} before {api} became healthy")
        time.sleep(0.5)
    raise TimeoutError(f"Prefect API at {api} not healthy after {timeout:.0f} s")


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if lmpipe dies (even by SIGKILL), so a killed
    ``lmpipe server`` leaves no orphaned server or workers (Linux only; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _api_request(url: str, body: dict | None = None) -> dict | None:
    """GET (or POST ``body``) JSON; None on 404."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise RuntimeError(f"{req.method} {url} failed: {e.code} {e.read().decode(errors='replace')[:500]}") from e


def default_job_template(kind: str) -> dict:
    """The base job template Prefect gives a new pool of this worker type."""
    if kind != "process":
        raise ValueError(f"pool type {kind!r}: lmpipe server starts process workers only; create other pools with "
                         "`prefect work-pool create --type ...` (see deployments/k8s-gpu-job-template.json)")
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


@dataclass
class LocalPrefect:
    """A Prefect server and its workers as child processes (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 4200
    database_url: str | None = None
    pools: Mapping[str, str] = field(default_factory=lambda: dict(POOLS))
    env: Mapping[str, str] = field(default_factory=dict)  # extra variables for every child
    log_dir: Path | None = None  # children's output goes here (default: inherit the terminal)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return api_url(self.host, self.port)

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    def _spawn(self, name: str, cmd: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the child)
        # A new session = a new process group: killpg reaches the child's own children
        # (the worker's flow-run processes, the server's services), and the terminal's
        # Ctrl-C reaches only us, so we decide the order things stop in.
        proc = subprocess.Popen(cmd, env=dict(env), cwd=REPO, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True, preexec_fn=_die_with_parent)
        self.procs[name] = proc
        return proc

    def start_server(self, timeout: float = 120.0) -> None:
        if self.host not in LOOPBACK:
            print(f"warning: binding the Prefect server to {self.host}: it has no authentication; "
                  "anyone who can reach this port can run flows", file=sys.stderr)
        if is_healthy(self.api):
            raise RuntimeError(f"something already serves {self.api}; stop it or choose another --port")
        extra = {"PREFECT_SERVER_API_HOST": self.host, "PREFECT_SERVER_API_PORT": str(self.port)}
        if self.database_url:
            extra["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        env = child_env(None, {**self.env, **extra})
        env.pop("PREFECT_API_URL", None)  # the server itself must not point at another API
        proc = self._spawn("server", prefect_cmd("server", "start", "--host", self.host, "--port", str(self.port)), env)
        wait_healthy(self.api, proc, timeout)

    def create_pools(self) -> None:
        """Create each work pool unless it exists (an existing pool's template is kept).

        Through the REST API rather than ``prefect work-pool create``: each CLI call is a new
        interpreter importing Prefect, seconds apiece on a busy machine.
        """
        for name, kind in self.pools.items():
            if _api_request(f"{self.api}/work_pools/{name}") is not None:
                continue
            body = {"name": name, "type": kind, "base_job_template": default_job_template(kind)}
            _api_request(f"{self.api}/work_pools/", body)

    def start_workers(self) -> None:
        # Flow results persisted (to $PREFECT_HOME/storage), so a pipeline running stages
        # through their deployments can read each stage's returned manifest path.
        env = child_env(self.api, {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", **self.env})
        for name in self.pools:
            self._spawn(f"worker-{name}", prefect_cmd("worker", "start", "--pool", name, "--name", f"lmpipe-{name}"), env)

    def start(self, timeout: float = 120.0) -> LocalPrefect:
        try:
            self.start_server(timeout)
            self.create_pools()
            self.start_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM each process group (workers first), SIGKILL whatever outlives ``grace``."""
        order = [n for n in self.procs if n != "server"] + [n for n in self.procs if n == "server"]
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # Stragglers in the group (a flow run the worker started) go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()

    def __enter__(self) -> LocalPrefect:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def deployment_entries(prefect_file: Path = PREFECT_YAML) -> list[dict]:
    """The ``deployments`` of a prefect.yaml, each with ``exists``: its entrypoint is in the repo."""
    import yaml

    entries = yaml.safe_load(Path(prefect_file).read_text()).get("deployments", [])
    for d in entries:
        path, _, func = d["entrypoint"].partition(":")
        src = REPO / path
        d["exists"] = src.is_file() and f"def {func}(" in src.read_text()
    return entries


def deploy(api: str, names: Sequence[str] = (), prefect_file: Path = PREFECT_YAML, env: Mapping[str, str] | None = None) -> str:
    """Register deployments from ``prefect.yaml``: ``names``, or every one whose flow exists.

    Runs ``prefect deploy`` from the repo root, the directory the entrypoints are relative to.
    Returns its output; raises with that output when it fails.
    """
    if not is_healthy(api):
        raise RuntimeError(f"no Prefect API at {api}: start one with `lmpipe server` (or set PREFECT_API_URL)")
    entries = deployment_entries(prefect_file)
    if not names:
        missing = [d["name"] for d in entries if not d["exists"]]
        if missing:
            print(f"warning: not registering {missing}: their flows are not in this checkout", file=sys.stderr)
        names = [d["name"] for d in entries if d["exists"]]
    unknown = sorted(set(names) - {d["name"] for d in entries})
    if unknown:
        raise ValueError(f"no deployment named {unknown} in {prefect_file}; it has {[d['name'] for d in entries]}")
    with expanded_prefect_file(prefect_file) as expanded:  # `config: configs/x.yaml` read in (flows/registry.py)
        cmd = prefect_cmd("--no-prompt", "deploy", "--prefect-file", str(expanded))
        for n in names:
            cmd += ["--name", n]
        r = subprocess.run(cmd, cwd=REPO, env=child_env(api, env), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"prefect deploy failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


class _Stop(Exception):
    """Raised by our SIGINT/SIGTERM handler so every wait unwinds through ``finally``."""


def serve_forever(lp: LocalPrefect) -> int:
    """Start everything, print where the UI is, and wait for Ctrl-C/SIGTERM or a child's death."""

    def on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        lp.start()
        print(f"Prefect UI   {lp.ui}\nPrefect API  {lp.api}\nwork pools   {', '.join(lp.pools)} (one worker each)\n"
              f"register the deployments with:  PREFECT_API_URL={lp.api} lmpipe deploy\nCtrl-C stops everything.", flush=True)
        while True:
            dead = [n for n, p in lp.procs.items() if p.poll() is not None]
            if dead:
                print(f"{', '.join(dead)} exited; stopping the rest", file=sys.stderr)
                return 1
            time.sleep(0.5)
    except _Stop as e:
        print(f"{e}: stopping workers and server", file=sys.stderr)
        return 0
    finally:
        # A second Ctrl-C must not interrupt the orderly stop.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        lp.stop()
        for s, h in old.items():
            signal.signal(s, h)
