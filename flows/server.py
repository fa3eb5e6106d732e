"""A local Prefect server with one worker per work pool, and deployment registration.

    lmpipe server                      # UI and API on http://127.0.0.1:4200, SQLite under PREFECT_HOME
    lmpipe server --database-url postgresql+asyncpg://user:pw@db:5432/prefect
    lmpipe deploy                      # register deployments/prefect.yaml against the running server

``lmpipe server`` runs three child processes, each in its own process group so that one
signal reaches everything it spawned: ``prefect server start`` and ``prefect worker start``
for the ``cpu`` and ``gpu`` pools (both ``process`` pools here: a worker on a GPU machine
serves ``gpu``; ``deployments/k8s-gpu-job-template.json`` shows a Kubernetes pool instead),
plus, in a thread, a read-only file server for the artifact roots (flows/file_server.py).
Ctrl-C or SIGTERM stops the workers first (they hand back their runs), then the server.

Security (flows/server_auth.py): the API requires basic auth with a secret generated once
and kept 0600 in ``$PREFECT_HOME/lmpipe-auth``; the work pools' job template accepts no
``command``, ``env`` or ``working_dir`` from a run; runs may write only under the allowed
roots (``--allow-root``, default ``<repo>/outputs``). The server binds 127.0.0.1 unless
``--host`` says otherwise; for a team, put it behind a TLS reverse proxy (docs/ui.md).
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
from typing import TYPE_CHECKING

from flows import server_auth

from flows.registry import expanded_prefect_file

if TYPE_CHECKING:
    from flows.file_server import ArtifactFileServer

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
# Work pools the deployments route to: data stages on cpu, training stages on gpu.
POOLS: dict[str, str] = {"cpu": "process", "gpu": "process"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Job variables a run may set on our process pools: nothing that chooses what is executed
# (command), how (env: LD_PRELOAD, PYTHONPATH) or where (working_dir).
RUN_SETTABLE = ("name", "labels", "stream_output")


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
        if "PREFECT_API_AUTH_STRING" not in env and (auth := server_auth.client_auth(api)):
            env["PREFECT_API_AUTH_STRING"] = auth
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


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if lmpipe dies (even by SIGKILL), so a killed
    ``lmpipe server`` leaves no orphaned server or workers (Linux only; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _api_request(url: str, body: dict | None = None, *, auth: str | None = None, method: str | None = None) -> dict | None:
    """GET (or POST ``body``) JSON; None on 404. ``auth``: the basic-auth string (default: the
    one a client of this API uses, see server_auth.client_auth)."""
    import base64

    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    auth = auth if auth is not None else server_auth.client_auth(url.split("/api", 1)[0] + "/api")
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if body is not None else "GET"), headers=headers)
    for attempt in range(4):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            # 503: SQLite busy under load ("database is locked"); Prefect's own client retries it too.
            if e.code == 503 and attempt < 3:
                time.sleep(1 + 2 * attempt)
                continue
            raise RuntimeError(f"{req.method} {url} failed: {e.code} {e.read().decode(errors='replace')[:500]}") from e


def default_job_template(kind: str) -> dict:
    """The base job template Prefect gives a new pool of this worker type."""
    if kind != "process":
        raise ValueError(f"pool type {kind!r}: lmpipe server starts process workers only; create other pools with "
                         "`prefect work-pool create --type ...` (see deployments/k8s-gpu-job-template.json)")
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def locked_job_template(kind: str = "process") -> dict:
    """The process pool's template with only ``RUN_SETTABLE`` variables, and no others accepted.

    The server validates a run's ``job_variables`` against ``variables`` (a JSON schema):
    ``additionalProperties: false`` makes it refuse ``command`` with a 422 before a run exists,
    and with no ``{{ command }}``/``{{ env }}`` in ``job_configuration`` a worker would have
    nothing to put such a value into anyway: it runs ``python -m prefect.engine``.
    """
    base = default_job_template(kind)
    props = base["variables"]["properties"]
    return {
        "job_configuration": {k: v for k, v in base["job_configuration"].items() if k in RUN_SETTABLE},
        "variables": {**base["variables"], "properties": {k: props[k] for k in RUN_SETTABLE}, "additionalProperties": False},
    }


@dataclass
class LocalPrefect:
    """A Prefect server and its workers as child processes (see the module docstring)."""

    host: str = "127.0.0.1"
    port: int = 4200
    database_url: str | None = None
    pools: Mapping[str, str] = field(default_factory=lambda: dict(POOLS))
    env: Mapping[str, str] = field(default_factory=dict)  # extra variables for every child
    log_dir: Path | None = None  # children's output goes here (default: inherit the terminal)
    allowed_roots: Sequence[Path] = (REPO / "outputs",)  # runs write only under these; the file server serves them
    files_port: int | None = None  # artifact file server (default: port + 1; 0 = any free port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    auth: str = field(default="", repr=False)  # loaded (or generated) by start()
    files: ArtifactFileServer | None = None

    def __post_init__(self) -> None:
        # Local roots absolute (workers and the file server resolve nothing); URL roots as given.
        self.allowed_roots = tuple(r if "://" in str(r) else Path(r).expanduser().resolve() for r in self.allowed_roots)

    @property
    def api(self) -> str:
        return api_url(self.host, self.port)

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    @property
    def home(self) -> Path:
        return server_auth.prefect_home(self.env)

    @property
    def auth_file(self) -> Path:
        return server_auth.auth_path(self.home)

    def _spawn(self, name: str, cmd: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (lives as long as the child)
        # A new session = a new process group: killpg reaches the child's own children
        # (the worker's flow-run processes, the server's services), and the terminal's
        # Ctrl-C reaches only us, so we decide the order things stop in.
        proc = subprocess.Popen(cmd, env=dict(env), cwd=REPO, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True, preexec_fn=die_with_parent)
        self.procs[name] = proc
        return proc

    def start_server(self, timeout: float = 120.0) -> None:
        if self.host not in LOOPBACK:
            print(f"warning: binding the Prefect server to {self.host}: its API and UI travel unencrypted; "
                  "put a TLS reverse proxy in front (docs/ui.md)", file=sys.stderr)
        if is_healthy(self.api):
            raise RuntimeError(f"something already serves {self.api}; stop it or choose another --port")
        self.auth = self.auth or server_auth.load_or_create_auth(self.auth_file)
        extra = {"PREFECT_SERVER_API_HOST": self.host, "PREFECT_SERVER_API_PORT": str(self.port),
                 "PREFECT_SERVER_API_AUTH_STRING": self.auth}
        if self.database_url:
            extra["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        env = child_env(None, {**self.env, **extra})
        env.pop("PREFECT_API_URL", None)  # the server itself must not point at another API
        env.pop("PREFECT_API_AUTH_STRING", None)
        proc = self._spawn("server", prefect_cmd("server", "start", "--host", self.host, "--port", str(self.port)), env)
        wait_healthy(self.api, proc, timeout)

    def create_pools(self) -> None:
        """Create each work pool, or lock down an existing one's template (see locked_job_template).

        Through the REST API rather than ``prefect work-pool create``: each CLI call is a new
        interpreter importing Prefect, seconds apiece on a busy machine.
        """
        for name, kind in self.pools.items():
            template = locked_job_template(kind)
            pool = _api_request(f"{self.api}/work_pools/{name}", auth=self.auth)
            if pool is None:
                _api_request(f"{self.api}/work_pools/", {"name": name, "type": kind, "base_job_template": template}, auth=self.auth)
            elif pool["base_job_template"] != template:
                offered = set(pool["base_job_template"].get("variables", {}).get("properties", {}))
                if offered - set(RUN_SETTABLE):
                    print(f"work pool {name}: runs may no longer set {sorted(offered - set(RUN_SETTABLE))}", file=sys.stderr)
                _api_request(f"{self.api}/work_pools/{name}", {"base_job_template": template}, auth=self.auth, method="PATCH")

    def start_files(self) -> None:
        from flows.file_server import ArtifactFileServer

        port = self.port + 1 if self.files_port is None else self.files_port
        self.files = ArtifactFileServer(self.host, port, list(self.allowed_roots), self.auth).start()

    def start_workers(self) -> None:
        env = child_env(self.api, {
            "PREFECT_API_AUTH_STRING": self.auth,
            # Flow results persisted as JSON (never pickle), so a pipeline running stages
            # through their deployments can read each stage's returned manifest path. Task
            # results stay in memory: shards talk through files, and nothing reads them back.
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",
            "PREFECT_TASKS_DEFAULT_PERSIST_RESULT": "false",
            server_auth.ALLOWED_ROOTS_ENV: server_auth.allowed_roots_value(list(self.allowed_roots)),
            **({"LMPIPE_FILES_URL": self.files.base_url} if self.files else {}),
            **self.env,
        })
        for name in self.pools:
            self._spawn(f"worker-{name}", prefect_cmd("worker", "start", "--pool", name, "--name", f"lmpipe-{name}"), env)

    def start(self, timeout: float = 120.0) -> LocalPrefect:
        try:
            for root in self.allowed_roots:
                if "://" not in str(root):
                    Path(root).expanduser().mkdir(parents=True, exist_ok=True)
            self.start_server(timeout)
            self.create_pools()
            self.start_files()
            self.start_workers()
            server_auth.write_state(self.home, api=self.api, ui=self.ui, files=self.files.base_url if self.files else "")
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
        if self.files is not None:
            self.files.stop()
            self.files = None
        with contextlib.suppress(FileNotFoundError):
            if server_auth.read_state(self.home).get("api") == self.api:
                server_auth.state_path(self.home).unlink()

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

    Runs ``prefect deploy`` from the repo root, the directory the entrypoints are relative to,
    keeps what a person set on existing schedules (:func:`restore_schedules`), and gives the
    ``pipeline`` deployment the sources ``lmpipe demo`` uses (:func:`use_demo_sources`).
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
    env = child_env(api, env)
    auth = env.get("PREFECT_API_AUTH_STRING", "")
    before = schedules_by_slug(api, auth)
    with expanded_prefect_file(prefect_file) as expanded:  # `config: configs/x.yaml` read in (flows/registry.py)
        cmd = prefect_cmd("--no-prompt", "deploy", "--prefect-file", str(expanded))
        for n in names:
            cmd += ["--name", n]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"prefect deploy failed (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    kept = restore_schedules(api, before, auth)
    out = r.stdout + "".join(f"kept the server's active state and parameters of schedule {k}\n" for k in kept)
    if "pipeline" in names:
        out += f"pipeline deployment: stages.data.sources = {use_demo_sources(api, auth)}\n"
    return out


def use_demo_sources(api: str, auth: str | None = None) -> list[str]:
    """Set the ``pipeline`` deployment's data sources to the demo's (flows/demo.py:demo_sources:
    pywb's sample WARCs, the shared Common Crawl samples and the debian-handbook WARC, each
    where this machine has it), fetching or packing them once into the lmpipe cache. The
    named config can only list paths that always exist; the pywb samples alone are 11
    documents, too few to validate a model on."""
    from flows.demo import demo_sources

    sources = demo_sources()
    dep = _api_request(f"{api}/deployments/name/pipeline/pipeline", auth=auth)
    params = json.loads(json.dumps(dep["parameters"]))
    params.setdefault("config", {}).setdefault("stages", {}).setdefault("data", {})["sources"] = sources
    _api_request(f"{api}/deployments/{dep['id']}", {"parameters": params}, auth=auth, method="PATCH")
    return sources


def schedules_by_slug(api: str, auth: str | None = None) -> dict[tuple[str, str], dict]:
    """Every schedule with a slug on the server: (deployment id, slug) -> schedule."""
    deployments = _api_request(f"{api}/deployments/filter", {"limit": 200}, auth=auth) or []
    return {(d["id"], s["slug"]): {**s, "deployment": d["name"]} for d in deployments for s in d.get("schedules") or [] if s.get("slug")}


def restore_schedules(api: str, before: Mapping[tuple[str, str], dict], auth: str | None = None) -> list[str]:
    """Put back the active state and parameters a schedule had before ``prefect deploy``.

    ``prefect deploy`` writes each schedule of prefect.yaml as the file says, so a schedule a
    person turned on (or gave other parameters) in the UI would go back to the file's inactive
    one. prefect.yaml names each schedule with a ``slug``; for a slug the server already had,
    the server's ``active`` and ``parameters`` win, while the file still sets the timing
    (cron/interval). A new slug takes the file's values. Returns ``deployment/slug`` of each
    schedule put back.
    """
    kept = []
    for key, now in schedules_by_slug(api, auth).items():
        old = before.get(key)
        if old is None:
            continue
        # Empty parameters on the server are no choice of a person's: prefect 3.8.8 resets them
        # to {} when a client PATCHes `active` alone (`prefect deployment schedule resume`).
        params = old["parameters"] or now["parameters"]
        if (old["active"], params) == (now["active"], now["parameters"]):
            continue
        _api_request(f"{api}/deployments/{key[0]}/schedules/{now['id']}",
                     {"slug": key[1], "schedule": now["schedule"], "active": old["active"], "parameters": params},
                     auth=auth, method="PATCH")
        kept.append(f"{now['deployment']}/{key[1]}")
    return kept


class _Stop(Exception):
    """Raised by our SIGINT/SIGTERM handler so every wait unwinds through ``finally``."""


def serve_forever(lp: LocalPrefect) -> int:
    """Start everything, print where the UI is, and wait for Ctrl-C/SIGTERM or a child's death."""

    def on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        lp.start()
        print(f"Prefect UI      {lp.ui}   (log in with the auth string in {lp.auth_file})\n"
              f"Prefect API     {lp.api}\nartifact files  {lp.files.base_url if lp.files else '-'}  (read-only: "
              f"{', '.join(str(r) for r in lp.allowed_roots)})\nwork pools      {', '.join(lp.pools)} (one worker each; runs write "
              f"only under the roots above)\nregister the deployments with:  PREFECT_API_URL={lp.api} lmpipe deploy\n"
              "Ctrl-C stops everything.", flush=True)
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
