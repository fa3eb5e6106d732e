"""Faults at the Prefect level: a flow-run process killed under a worker, a task that raises
mid-shard, and the Prefect server restarted while a flow runs.

1. A real ``prefect server`` (SQLite, its own PREFECT_HOME, a free 127.0.0.1 port) with a
   process worker on the ``cpu`` pool and the ``data`` deployment registered. A run of the
   deployment is SIGKILLed mid-stage (the flow-run process the worker started, found by its
   PREFECT__FLOW_RUN_ID); the server marks it Crashed; retrying it (what the UI's Retry
   does: force the run to AwaitingRetry) completes it with output identical to an
   uninterrupted run.
2. A task that raises mid-shard (the HTTP body of its input is cut by a connection reset,
   with the reader's own retries off) is retried by Prefect (``extract_shard`` has
   ``retries``); the shard is rewritten from scratch and equals an unfaulted run's.
3. The same server is SIGKILLed while a flow (a ``lmpipe run data`` subprocess pointed at it)
   is mid-stage, and started again on the same port and database a few seconds later. What
   happens is measured and recorded: the flow either finishes (the client retried) or
   fails, in which case a rerun finishes; either way the output must equal an
   uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from chaos_report import lost_and_duplicated
from fault_http import FaultServer
from kill import REPO, diff_snapshots, flow_env, ids_of, stage_dirs, stage_snapshot

from lm.data.shards import accounted, read_manifest

CC = "commoncrawl"
STAGES = [
    "extract",
    "filters",
    "line_counts",
    "line_duplicates",
    "exact_dedup",
    "minhash_signatures",
    "minhash_buckets",
    "minhash_clusters",
    "minhash",
]
# Model-based filters off: these tests are about Prefect, not about the funnel.
LEAN = {"langid": {"enabled": False}, "rules": {"enabled": False}, "quality": {"enabled": False}}


def _config(reference: Path, root: Path) -> dict:
    return {
        "sources": [str(reference / CC / "warcfile.warc.gz"), str(reference / CC / "whirlwind.warc.gz")],
        "root": str(root),
        "max_workers": 2,
        "num_samples": 1,
        "extract": {"slice_bytes": 50_000},
        "filters": LEAN,
    }


def _snapshots(root: Path) -> dict:
    out = {}
    for s in STAGES:
        dirs = stage_dirs(root, s)
        out[s] = stage_snapshot(dirs[0], root=root) if len(dirs) == 1 else {"<dirs>": [d.name for d in dirs]}
    return out


def _compare(root: Path, clean_root: Path) -> tuple[list[str], int, int, bool]:
    """(stages that differ, records lost, duplicated, every stage accounted) vs the clean run."""
    want, got = _snapshots(clean_root), _snapshots(root)
    differ = [s for s in STAGES if diff_snapshots(want[s], got[s])]
    final = read_manifest(stage_dirs(root, "minhash")[0]) if stage_dirs(root, "minhash") else None
    if final is None:
        return differ or ["minhash"], 0, 0, False
    clean_final = read_manifest(stage_dirs(clean_root, "minhash")[0])
    lost, dup = lost_and_duplicated(
        ids_of(clean_final["_path"]) + ids_of(clean_final["_path"], kind="rejects"),
        ids_of(final["_path"]) + ids_of(final["_path"], kind="rejects"),
    )
    ok = all(accounted(read_manifest(stage_dirs(root, s)[0])) for s in STAGES if stage_dirs(root, s))
    return differ, lost, dup, ok


@pytest.fixture
def fault_server():
    s = FaultServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def clean_root(prefect_harness, reference, tmp_path_factory) -> Path:
    from flows.data import DataConfig, data_flow

    root = tmp_path_factory.mktemp("prefect-clean")
    data_flow(config=DataConfig.model_validate(_config(reference, root)))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``prefect server start`` + a process worker on ``cpu`` + the ``data`` deployment."""
    from flows.server import LocalPrefect, deploy
    from tests.e2e.helpers import free_port

    home = tmp_path_factory.mktemp("prefect-home")
    # Runs may set no env (the pool's template refuses it): the shard delay is the workers'.
    lp = LocalPrefect(
        port=free_port(),
        pools={"cpu": "process"},
        log_dir=home / "logs",
        files_port=0,
        allowed_roots=[tmp_path_factory.getbasetemp()],
        env={
            "PREFECT_HOME": str(home),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "LMPIPE_TEST_SHARD_DELAY_S": "0.3",
        },
    )
    lp.start(timeout=180)
    try:
        deploy(lp.api, ["data"], env={"PREFECT_API_AUTH_STRING": lp.auth})
        yield lp
    finally:
        lp.stop()


def _client(server):
    from tests.e2e.helpers import api_client

    return api_client(server)


def _flow_run_pids(run_id) -> list[int]:
    """Processes whose environment names this flow run (the worker sets PREFECT__FLOW_RUN_ID)."""
    key = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if key in env.read_bytes().split(b"\0"):
                pids.append(int(env.parent.name))
        except OSError:
            pass
    return pids


def _wait_state(client, run_id, types: set[str], timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state is not None and state.type.value in types:
            return state
        time.sleep(0.5)
    raise TimeoutError(f"flow run {run_id} not in {types} after {timeout}s (last: {state})")


def _wait_crash_reported_by_worker(client, run_id, timeout: float = 20.0) -> None:
    """Wait for the worker's report of the crash (it may never come: then ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.read_flow_run(run_id).state
        if state.type.value == "CRASHED" and (state.message or "").startswith("Flow run infrastructure exited"):
            return
        time.sleep(0.5)


def test_flow_run_killed_under_worker_is_crashed_then_retried(server, clean_root, reference, tmp_path, chaos_record):
    """One trial in ``make test`` (each costs ~30 s of worker round trips); the soak runs ``trials``."""
    _flow_run_killed_under_worker(server, clean_root, reference, tmp_path, 1, chaos_record, "")


@pytest.mark.soak
def test_flow_run_killed_under_worker_soak(server, clean_root, reference, tmp_path, trials, chaos_record):
    _flow_run_killed_under_worker(server, clean_root, reference, tmp_path, trials, chaos_record, " (soak)")


def _flow_run_killed_under_worker(server, clean_root, reference, tmp_path, trials, chaos_record, label):
    """SIGKILL the flow-run process of a deployment run mid-stage → Crashed → retry → exact output."""
    import random

    from prefect.deployments import run_deployment
    from prefect.states import AwaitingRetry

    from tests.e2e.helpers import settings

    survived, lost, dup, notes, failures, retries_needed = 0, 0, 0, [], [], []
    with settings(server):
        client = _client(server)
        for seed in range(trials):
            rng = random.Random(seed)
            root = tmp_path / f"seed-{seed}"
            k = rng.randint(1, 3)  # extract shards finished before the kill (of 4)
            run = run_deployment(
                name="data/data", parameters={"config": _config(reference, root)}, timeout=0, as_subflow=False
            )
            deadline = time.monotonic() + 120
            while len(list(root.glob("extract/*/part-*.done.json"))) < k:
                assert time.monotonic() < deadline, f"no extract shard finished; worker log in {server.log_dir}"
                time.sleep(0.02)
            pids = _flow_run_pids(run.id)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            crashed = _wait_state(client, run.id, {"CRASHED", "FAILED", "COMPLETED"})
            mid = not list(root.glob("extract/*/_manifest.json"))
            # Two reports of the crash arrive: the flow-run executor's at once, the worker's
            # ("Flow run infrastructure exited ...") seconds later. A retry set between the two
            # is overwritten by the second (seen with Prefect 3.8.8), so retry after it.
            _wait_crash_reported_by_worker(client, run.id)
            # "Retry" again if a late crash report overwrote it (presses is read after the loop)
            for presses in range(1, 4):  # noqa: B007
                client.set_flow_run_state(run.id, AwaitingRetry(), force=True)  # what the UI's "Retry" does
                if (
                    _wait_state(client, run.id, {"RUNNING", "COMPLETED", "FAILED", "CRASHED"}, timeout=60).type.value
                    != "CRASHED"
                ):
                    break
            retries_needed.append(presses)
            final = _wait_state(client, run.id, {"COMPLETED", "FAILED", "CRASHED"}, timeout=180)
            differ, lo, du, acc = _compare(root, clean_root)
            lost, dup = lost + lo, dup + du
            ok = (
                bool(pids)
                and crashed.type.value == "CRASHED"
                and mid
                and final.type.value == "COMPLETED"
                and not differ
                and acc
            )
            survived += ok
            notes.append(
                f"killed {len(pids)} process(es) after {k} shard(s): {crashed.type.value}, retry {final.type.value}"
            )
            if not ok:
                failures.append((seed, pids, crashed, mid, final, differ, acc))
    chaos_record(
        "SIGKILL flow-run process under a worker" + label,
        "data (deployment)",
        trials,
        survived,
        lost,
        dup,
        note=f"marked Crashed; UI-style retry (AwaitingRetry; presses per trial {retries_needed}) resumes; "
        "output == uninterrupted run",
    )
    assert survived == trials and lost == 0 and dup == 0, (failures, notes)


def test_task_raising_mid_shard_is_retried_by_prefect(prefect_harness, fault_server, reference, tmp_path, chaos_record):
    """The input's HTTP body is reset mid-transfer (reader retries off): the extract task raises
    mid-shard, Prefect retries it, and the shard equals an unfaulted run's."""
    from prefect.client.orchestration import get_client

    from flows.data import DataConfig, data_flow

    data = (reference / CC / "warcfile.warc.gz").read_bytes()
    url = fault_server.add("/warcfile.warc.gz", data)
    cfg = lambda root: {
        "sources": [url],
        "root": str(root),
        "max_workers": 1,
        "filters": None,
        "http": {"retries": 0, "backoff_s": 0.1},
    }
    clean = data_flow(config=DataConfig.model_validate(cfg(tmp_path / "clean")))
    fault_server.faults["/warcfile.warc.gz"] = [f"reset:{len(data) // 2}"]
    faulted = data_flow(config=DataConfig.model_validate(cfg(tmp_path / "faulted")))
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["extract-00000"])))
    attempts = max(r.run_count for r in runs)
    want, got = (
        stage_snapshot(Path(clean["extract"]).parent, root=tmp_path / "clean"),
        stage_snapshot(Path(faulted["extract"]).parent, root=tmp_path / "faulted"),
    )
    differ = diff_snapshots(want, got)
    lost, dup = lost_and_duplicated(ids_of(clean["extract"]), ids_of(faulted["extract"]))
    ok = attempts == 2 and not differ and accounted(read_manifest(faulted["extract"]))
    chaos_record(
        "task raises mid-shard (connection reset)",
        "extract",
        1,
        int(ok),
        lost,
        dup,
        note=f"Prefect task retry: {attempts} attempts; shard == unfaulted run's",
    )
    assert ok and lost == 0 and dup == 0, (attempts, differ)


def test_prefect_server_restarted_mid_run(server, clean_root, reference, tmp_path, chaos_record):
    """One trial in ``make test``; the soak runs ``trials`` (last in the module: it restarts the server)."""
    _server_restarted(server, clean_root, reference, tmp_path, 1, chaos_record, "")


@pytest.mark.soak
def test_prefect_server_restarted_mid_run_soak(server, clean_root, reference, tmp_path, trials, chaos_record):
    _server_restarted(server, clean_root, reference, tmp_path, trials, chaos_record, " (soak)")


def _server_restarted(server, clean_root, reference, tmp_path, trials, chaos_record, label):
    """Kill the server (SIGKILL) while a flow runs against it; start it again on the same port
    and database. Record whether the run finished by itself or needed a rerun."""
    import random

    from flows.server import wait_healthy

    outcomes, survived, lost, dup, failures = [], 0, 0, 0, []
    for seed in range(trials):
        rng = random.Random(seed)
        root = tmp_path / f"seed-{seed}"
        cfg_path = tmp_path / f"seed-{seed}.yaml"
        cfg_path.write_text(yaml.safe_dump(_config(reference, root)))
        log = tmp_path / f"seed-{seed}.log"
        env = flow_env(
            {"PREFECT_API_URL": server.api, "PREFECT_API_AUTH_STRING": server.auth, "LMPIPE_TEST_SHARD_DELAY_S": "0.3"}
        )
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "run", "data", "--config", str(cfg_path)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + 120
            k = rng.randint(1, 3)
            while len(list(root.glob("extract/*/part-*.done.json"))) < k:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.02)
            down_s = rng.uniform(1.0, 5.0)
            sp = server.procs["server"]
            os.killpg(sp.pid, signal.SIGKILL)
            sp.wait()
            time.sleep(down_s)
            server.procs.pop("server")
            server.start_server(timeout=180)  # same port, same PREFECT_HOME (SQLite database)
            try:
                rc = proc.wait(timeout=240)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        how = "finished by itself" if rc == 0 else f"failed (exit {rc}); rerun"
        if rc != 0:
            rerun = subprocess.run(
                [sys.executable, "-m", "flows.cli", "run", "data", "--config", str(cfg_path)],
                cwd=REPO,
                env=env,
                capture_output=True,
                timeout=300,
            )
            how += " finished" if rerun.returncode == 0 else f" failed too (exit {rerun.returncode})"
        wait_healthy(server.api)
        differ, lo, du, acc = _compare(root, clean_root)
        lost, dup = lost + lo, dup + du
        ok = not differ and acc
        survived += ok
        outcomes.append(f"server down {down_s:.1f}s after {k} shard(s): {how}")
        if not ok:
            failures.append((seed, differ, acc, log.read_text()[-3000:]))
    chaos_record(
        "Prefect server SIGKILLed and restarted mid-run" + label,
        "data",
        trials,
        survived,
        lost,
        dup,
        note="; ".join(sorted(set(o.split(": ", 1)[1] for o in outcomes))),
    )
    print("\n".join(outcomes))
    assert survived == trials and lost == 0 and dup == 0, failures
