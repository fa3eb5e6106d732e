"""Task runners as configuration: where a flow's shard tasks run.

Every flow that maps tasks over shards (``data``, ``filters``, ``tokenize``, ``scaling``)
has a ``runner`` section; the same config runs on any of them with identical outputs:

    runner: {kind: threads}                              # default: a thread pool in the flow process
    runner: {kind: processes, max_workers: 4}            # a local process pool (spawned interpreters)
    runner: {kind: dask, max_workers: 2}                 # a temporary Dask LocalCluster, 2 worker processes
    runner: {kind: dask, address: tcp://10.0.0.5:8786}   # an existing Dask scheduler
    runner: {kind: ray}                                  # a local ``ray.init()`` for the flow run
    runner: {kind: ray, address: ray://10.0.0.5:10001}   # an existing Ray cluster

    lmpipe run data --config configs/data-demo.yaml --set runner.kind=dask --set runner.address=tcp://10.0.0.5:8786

Tasks get paths and small configs and return manifest/marker paths, so any runner can
pickle them; workers on other machines must reach the artifact root under the same path
(a shared filesystem) or through an object-store URL, and have lmpipe installed.
``dask`` and ``ray`` come from the extras ``lmpipe[dask]`` / ``lmpipe[ray]``; they are
imported only when chosen, and a missing extra fails at config validation.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Literal

from prefect.logging import get_logger
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner
from pydantic import Field, ValidationInfo, field_validator

from lm.config import Config

RunnerKind = Literal["threads", "processes", "dask", "ray"]

# The module each kind needs, and the extra that installs it.
_EXTRAS = {"dask": "prefect_dask", "ray": "prefect_ray"}
_DASK_ADDRESS = re.compile(r"^((tcp|tls|ucx|ws|wss)://)?[\w.\-\[\]:]+:\d+$")
_RAY_ADDRESS = re.compile(r"^(auto|(ray://)?[\w.\-\[\]:]+:\d+)$")


class RunnerConfig(Config):
    """Which Prefect task runner executes a flow's shard tasks (does not change any output)."""

    kind: RunnerKind = Field(
        default="threads",
        description="threads: a thread pool in the flow process (default); processes: a local process pool; "
        "dask: a Dask cluster (prefect-dask, `pip install 'lmpipe[dask]'`); "
        "ray: a Ray cluster (prefect-ray, `pip install 'lmpipe[ray]'`)",
    )
    address: str | None = Field(
        default=None,
        description="dask: scheduler address of an existing cluster (`tcp://host:8786`); ray: an existing cluster "
        "(`ray://host:10001`, `host:6379` or `auto`). Unset: a local "
        "cluster is started for the flow run and stopped after it",
    )
    max_workers: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="threads / processes: pool size; dask without address: LocalCluster worker processes; "
        "ray without address: CPUs of the local Ray instance. Unset: the flow's own `max_workers` (or its default)",
    )
    threads_per_worker: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "dask without address: threads per LocalCluster worker "
            "process (1: one shard at a time per process, no GIL sharing)"
        ),
    )

    @field_validator("kind")
    @classmethod
    def _extra_installed(cls, kind: str) -> str:
        module = _EXTRAS.get(kind)
        if module and importlib.util.find_spec(module) is None:
            raise ValueError(
                f"kind={kind!r} needs the {kind} extra ({module} is not installed): pip install 'lmpipe[{kind}]'"
            )
        return kind

    @field_validator("address")
    @classmethod
    def _address_fits_kind(cls, address: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind", "threads")
        if address is None:
            return None
        if kind not in ("dask", "ray"):
            raise ValueError(
                f"address={address!r} is only for kind dask or ray (an "
                f"existing cluster); kind {kind!r} runs on this machine"
            )
        if kind == "dask" and not _DASK_ADDRESS.match(address):
            raise ValueError(
                f"address={address!r} is not a Dask scheduler address; expected tcp://host:port (or host:port)"
            )
        if kind == "ray" and not _RAY_ADDRESS.match(address):
            raise ValueError(f"address={address!r} is not a Ray address; expected ray://host:port, host:port or auto")
        return address

    @field_validator("max_workers")
    @classmethod
    def _workers_need_local(cls, n: int | None, info: ValidationInfo) -> int | None:
        if n is not None and info.data.get("address"):
            raise ValueError(
                f"max_workers={n} sizes a local pool or cluster; with address "
                "set the cluster's own workers run the tasks: drop one"
            )
        return n

    @field_validator("threads_per_worker")
    @classmethod
    def _threads_need_local_dask(cls, n: int, info: ValidationInfo) -> int:
        if n != 1 and (info.data.get("kind") != "dask" or info.data.get("address")):
            raise ValueError(f"threads_per_worker={n} applies only to kind dask without address (a LocalCluster)")
        return n

    def describe(self, default_workers: int) -> str:
        """One line for logs: what runs the tasks."""
        if self.address:
            return f"{self.kind} cluster at {self.address}"
        n = self.max_workers or default_workers
        unit = {"threads": "threads", "processes": "processes", "dask": "local worker processes", "ray": "local CPUs"}[
            self.kind
        ]
        return f"{self.kind} ({n} {unit})"


def build_task_runner(config: RunnerConfig, default_workers: int = 4) -> TaskRunner:
    """The (not yet started) Prefect task runner for ``config``; use it as a context manager.

    ``default_workers`` sizes a local pool or cluster when ``config.max_workers`` is unset
    (the flow passes its own ``max_workers``, so existing configs keep working).
    """
    n = config.max_workers or default_workers
    if config.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=n)
    if config.kind == "processes":
        return ProcessPoolTaskRunner(max_workers=n)
    if config.kind == "dask":
        from prefect_dask import DaskTaskRunner  # the dask extra: imported only when chosen

        if config.address:
            return DaskTaskRunner(address=config.address)
        # Processes, not threads: extraction and filtering are CPU-bound Python (the GIL).
        # No dashboard: it would need bokeh and a free port, and nothing reads it in a flow run.
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": n,
                "threads_per_worker": config.threads_per_worker,
                "processes": True,
                "dashboard_address": None,
            }
        )
    if config.kind == "ray":
        from prefect_ray import RayTaskRunner  # the ray extra

        if config.address:
            return RayTaskRunner(address=config.address)
        return RayTaskRunner(
            init_kwargs={
                "num_cpus": n,
                "include_dashboard": False,
                # Ray's workers do not inherit the flow's import path.
                "runtime_env": {"env_vars": {"PYTHONPATH": _pythonpath()}},
            }
        )
    raise AssertionError(config.kind)  # unreachable: pydantic checked the kind


@contextmanager
def task_runner(config: RunnerConfig, default_workers: int = 4) -> Iterator[TaskRunner]:
    """The started task runner for ``config`` (see ``build_task_runner``), for a ``with`` block.

    Tasks that run in other processes report to the Prefect API named in the settings they
    receive from the flow. A flow run without ``PREFECT_API_URL`` talks to a temporary local
    server that those settings do not name, so every worker process would start a temporary
    server of its own and the task runs would be recorded there; the temporary server's
    address is pinned for the block instead.
    """
    with ExitStack() as stack:
        if config.kind != "threads" and not PREFECT_API_URL.value():
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer()  # the instance this process's clients use
            server.start()  # already running during a flow run: returns at once
            if config.address:
                get_logger("lmpipe.runners").warning(
                    "runner.address=%s with Prefect's temporary server "
                    "at %s: workers on other machines cannot reach it; "
                    "start a Prefect server they can reach and set PREFECT_API_URL",
                    config.address,
                    server.api_url,
                )
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))
        yield stack.enter_context(build_task_runner(config, default_workers))


def _pythonpath() -> str:
    """An import path for local Ray workers: the directory holding lm/, tasks/ and flows/
    (a checkout or site-packages) before the flow's own PYTHONPATH."""
    parts = [str(Path(__file__).resolve().parents[1]), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return os.pathsep.join(dict.fromkeys(p for p in parts if p))


def resolve_location(path: str) -> str:
    """A root or manifest location every worker can use: local paths made absolute (workers
    do not share the flow's working directory), URLs (``s3://…``) unchanged."""
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())
