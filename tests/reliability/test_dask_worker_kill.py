"""SIGKILL a Dask worker process while it runs an extract shard.

The data flow runs on an existing Dask cluster (``runner.address``: a LocalCluster with 2
worker processes, 1 thread each, that this test owns). Each extract shard stalls inside its
unfinished shard (``LMPIPE_TEST_SHARD_STALL_S``, set only in the workers' environment);
a watcher kills a worker that is processing one. Dask reschedules the task on the live
worker (the nanny restarts the dead one), Prefect runs it to completion, and the stage must
be byte-identical to an uninterrupted threads run: same shard checksums, same ids, nothing
lost or duplicated.
"""

import os
import signal
import threading
import time
from pathlib import Path

from chaos_report import lost_and_duplicated

from flows.data import DataConfig, data_flow
from lm.data.shards import iter_rows, manifest_dir, read_manifest

CC = "commoncrawl"
STALL_S = 1.5  # long enough to land a kill inside a shard; short enough for make test
NUM_SHARDS = 5


def _config(reference: Path, root: Path, runner: dict) -> DataConfig:
    return DataConfig.model_validate(
        {
            "sources": [str(reference / CC / "warcfile.warc.gz")],
            "root": str(root),
            "extract": {"slice_bytes": 30_000},  # 5 shards
            "filters": None,  # the fault is in the extract stage's tasks
            "runner": runner,
        }
    )


def _stage(manifest: str) -> dict:
    m = read_manifest(manifest)
    return {
        "sha256": [s.get("sha256") for s in m["shards"]],
        "counts": m["counts"],
        "parquet": {p.name: p.read_bytes() for p in sorted(manifest_dir(m).glob("*.parquet"))},
    }


def _kill_a_busy_worker(client, pids: dict, killed: list, stop: threading.Event) -> None:
    """Wait until a worker is processing a shard task, let the shard start, SIGKILL it."""
    while not stop.is_set():
        busy = {w: keys for w, keys in client.processing().items() if keys and w in pids}
        if busy:
            time.sleep(STALL_S / 2)  # past the task's start-up, inside the stalled shard
            worker = sorted(busy)[0]
            os.kill(pids[worker], signal.SIGKILL)
            killed.append((worker, pids[worker], busy[worker][0]))
            return
        time.sleep(0.02)


def test_dask_worker_killed_mid_shard(prefect_harness, reference, tmp_path, trials, chaos_record):
    from distributed import Client, LocalCluster

    clean = data_flow(config=_config(reference, tmp_path / "clean", {"kind": "threads"}))["extract"]
    want = _stage(clean)
    want_ids = [r["id"] for r in iter_rows(clean)]
    assert len(want["sha256"]) == NUM_SHARDS and len(want_ids) > 0

    survived = lost = duplicated = 0
    notes = []
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"LMPIPE_TEST_SHARD_STALL_S": str(STALL_S)},
        ) as cluster,
        Client(cluster) as client,
    ):
        for trial in range(trials):
            client.wait_for_workers(2, timeout=120)
            pids = client.run(os.getpid)  # worker address -> pid
            killed: list = []
            stop = threading.Event()
            watcher = threading.Thread(target=_kill_a_busy_worker, args=(client, pids, killed, stop), daemon=True)
            watcher.start()
            root = tmp_path / f"trial-{trial}"
            try:
                got = data_flow(
                    config=_config(reference, root, {"kind": "dask", "address": cluster.scheduler_address})
                )["extract"]
            except Exception as e:  # a trial that does not survive is counted, then reported
                notes.append(f"trial {trial}: flow failed: {type(e).__name__}: {e}"[:300])
                continue
            finally:
                stop.set()
                watcher.join(timeout=10)
            got_ids = [r["id"] for r in iter_rows(got)]
            n_lost, n_dup = lost_and_duplicated(want_ids, got_ids)
            lost, duplicated = lost + n_lost, duplicated + n_dup
            if not killed:
                notes.append(f"trial {trial}: no worker was busy to kill")
                continue
            _, pid, key = killed[0]
            # The killed task ran again: the scheduler moved it to 'processing' twice.
            runs = sum(1 for t in cluster.scheduler.story(key) if t[2] == "processing")
            exact = _stage(got) == want and got_ids == want_ids
            if runs >= 2 and exact:
                survived += 1
            else:
                notes.append(
                    f"trial {trial}: killed pid {pid} running {key}; task processed {runs}x; output exact: {exact}"
                )

    chaos_record(
        "SIGKILL Dask worker mid-shard",
        "extract",
        trials,
        survived,
        lost,
        duplicated,
        note="; ".join(notes)
        or f"rescheduled on the live worker, shards byte-identical ({NUM_SHARDS} shards, 2 workers)",
    )
    assert survived == trials, notes
    assert lost == 0 and duplicated == 0
