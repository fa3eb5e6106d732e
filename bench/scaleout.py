"""Throughput of the data flow (extract + the whole filtering funnel) per task runner, same input.

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/scaleout.py                 # ~4 MB of WARC
    PYTHONPATH=. nice -n 10 .venv/bin/python bench/scaleout.py --mb 8 --slice-mb 0.25

Input: the real Common Crawl WARCs in ../shared/reference/commoncrawl (warcfile,
clueweb-quirk, whirlwind) concatenated and repeated to at least ``--mb`` MB of gzip, split
into ``--slice-mb`` extract shards. Every configuration runs the same ``data`` flow config
(loose thresholds, so every stage scores every document) into its own root, one after the
other, against one temporary Prefect server:

  threads   ThreadPoolTaskRunner, --workers threads (the default runner)
  dask-1    an existing Dask LocalCluster, 1 worker process × 1 thread (runner.address)
  dask-N    the same with --workers worker processes
  ray-N     a local Ray (ray.init, num_cpus=--workers), if prefect-ray is installed

The clusters are started before the timed run and warmed up by one small run (imports,
fastText models loaded in every worker), as a long-lived cluster would be: the figures are
steady-state throughput, and cluster start-up is reported apart. docs/s = documents entering
the funnel (extract's kept rows) / wall seconds of the whole flow. Each run's outputs are
checked byte-identical to the threads run. CPU seconds (this process + Dask workers; not
the Prefect server, not Ray's workers) show the work each runner spends on the same input;
the cost of one no-op task run on threads and on a Dask worker shows what a task costs
before it does any work.
The load average is printed before and after each run: on a shared machine, read the
ratios with it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REFERENCE = Path(os.environ.get("LMPIPE_REFERENCE", REPO.parent / "shared" / "reference"))
FILES = ["warcfile.warc.gz", "clueweb-quirk.warc.gz", "whirlwind.warc.gz"]
FUNNEL = {  # loose thresholds: documents flow through every stage (as in tests/flows/test_runners.py)
    "langid": {"languages": [], "min_score": 0.0},
    "rules": {
        "gopher_thresholds": {
            "min_words": 20,
            "min_alpha_word_fraction": 0.1,
            "min_mean_word_length": 1,
            "max_mean_word_length": 1000,
        },
        "c4": False,
        "bad_words": False,
    },
    "quality": {"min_score": 0.0},
    "harmful": {"enabled": True, "nsfw_max_score": 0.999, "toxic_max_score": 0.999},
    "minhash": {"num_hashes": 64, "num_bands": 16, "num_bucket_tasks": 2},
}


def build_input(out: Path, min_mb: float) -> int:
    """The sample WARCs repeated into one file of at least ``min_mb`` MB (gzip members concatenate)."""
    blob = b"".join((REFERENCE / "commoncrawl" / f).read_bytes() for f in FILES)
    with open(out, "wb") as f:
        for _ in range(max(1, int(min_mb * 1e6 // len(blob)) + 1)):
            f.write(blob)
    return out.stat().st_size


def config(source: Path, root: Path, slice_mb: float, runner: dict, workers: int):
    from flows.data import DataConfig

    return DataConfig.model_validate(
        {
            "sources": [str(source)],
            "root": str(root),
            "extract": {"slice_bytes": int(slice_mb * 1e6)},
            "max_workers": workers,
            "filters": FUNNEL,
            "runner": runner,
        }
    )


def digest(stages: dict[str, str]) -> str:
    """One hash over every stage's fingerprint and shard checksums: equal digests = identical outputs."""
    from lm.data.shards import read_manifest

    h = hashlib.sha256()
    for name, path in stages.items():
        m = read_manifest(path)
        h.update(f"{name}:{m['fingerprint']}:{[s.get('sha256') for s in m['shards'] + m.get('rejects', [])]}".encode())
    return h.hexdigest()[:16]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_seconds(cluster=None) -> float | None:
    """CPU seconds used so far by this process (the flow and its threads) plus, for a Dask
    cluster, its worker processes (the Prefect server's share is not counted)."""
    if cluster is None:
        return _cpu_s()
    from distributed import Client

    with Client(cluster) as client:
        return _cpu_s() + sum(client.run(_cpu_s).values())


def timed_run(
    name: str, runner: dict, args, work: Path, source: Path, warm: Path, cluster=None, count_cpu: bool = True
) -> dict:
    from flows.data import data_flow
    from lm.data.shards import read_manifest

    data_flow(config=config(warm, work / f"{name}-warmup", args.slice_mb, runner, args.workers))  # imports, models
    before, cpu0 = load(), cpu_seconds(cluster) if count_cpu else None
    t0 = time.perf_counter()
    stages = data_flow(config=config(source, work / name, args.slice_mb, runner, args.workers))
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(cluster) - cpu0 if count_cpu else None
    extract = read_manifest(stages["extract"])
    docs = extract["counts"]["kept"]
    return {
        "config": name,
        "shards": len(extract["shards"]),
        "docs": docs,
        "records": extract["counts"]["in"],
        "final_docs": read_manifest(stages["minhash"])["counts"]["kept"],
        "wall_s": wall,
        "docs_per_s": docs / wall,
        "cpu_s": cpu,
        "load_before": before,
        "load_after": load(),
        "digest": digest(stages),
    }


def task_overhead(runner: dict, n: int = 30) -> float:
    """Seconds per no-op task run on ``runner`` (after 5 warm-up tasks): the fixed cost of a
    Prefect task run there (context, API client, state reports), with no work in it."""
    from prefect import flow, task

    from flows.runners import RunnerConfig, task_runner

    @task
    def noop(i: int) -> int:
        return i

    @flow(name="task-overhead")
    def overhead() -> float:
        with task_runner(RunnerConfig.model_validate(runner), 1) as r:
            r.map(noop, {"i": list(range(5))}).result()
            t0 = time.perf_counter()
            r.map(noop, {"i": list(range(n))}).result()
            return (time.perf_counter() - t0) / n

    return overhead()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=4.0, help="MB of gzip WARC input (the samples, repeated)")
    ap.add_argument("--slice-mb", type=float, default=0.25, help="extract shard size (MB of the input file)")
    ap.add_argument(
        "--workers", type=int, default=2, help="threads / Dask worker processes / Ray CPUs of the parallel configs"
    )
    ap.add_argument("--no-ray", action="store_true", help="skip Ray even if installed")
    args = ap.parse_args()

    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="lmpipe-bench-prefect-"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # per-task INFO lines would dominate the output
    import importlib.util

    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    work = Path(tempfile.mkdtemp(prefix="lmpipe-scaleout-"))
    source, warm = work / "input.warc.gz", work / "warm.warc.gz"
    size = build_input(source, args.mb)
    warm.write_bytes((REFERENCE / "commoncrawl" / "whirlwind.warc.gz").read_bytes())
    print(
        f"input: {size / 1e6:.1f} MB gzip WARC ({source}), shards "
        f"of {args.slice_mb} MB; {os.cpu_count()} CPUs; load {load()}"
    )
    rows, startup = [], {}
    with prefect_test_harness(server_startup_timeout=120):
        overhead = {"threads (1)": task_overhead({"kind": "threads", "max_workers": 1})}
        rows.append(timed_run("threads", {"kind": "threads", "max_workers": args.workers}, args, work, source, warm))
        for n in sorted({1, args.workers}):
            t0 = time.perf_counter()
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
                startup[f"dask-{n}"] = time.perf_counter() - t0
                rows.append(
                    timed_run(
                        f"dask-{n}",
                        {"kind": "dask", "address": cluster.scheduler_address},
                        args,
                        work,
                        source,
                        warm,
                        cluster,
                    )
                )
                if n == 1:
                    overhead["dask-1"] = task_overhead({"kind": "dask", "address": cluster.scheduler_address})
        if not args.no_ray and importlib.util.find_spec("prefect_ray"):
            import ray

            t0 = time.perf_counter()
            ray.init(
                num_cpus=args.workers,
                include_dashboard=False,
                namespace="prefect",
                runtime_env={
                    "env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
                },
            )
            startup[f"ray-{args.workers}"] = time.perf_counter() - t0
            try:  # RayTaskRunner finds the running local instance and leaves it up
                rows.append(
                    timed_run(f"ray-{args.workers}", {"kind": "ray"}, args, work, source, warm, count_cpu=False)
                )
            finally:
                ray.shutdown()

    base = next(r for r in rows if r["config"] == "dask-1")["docs_per_s"]
    print(
        "\n| config | shards | docs | wall s | docs/s | vs dask-1 | CPU s "
        "(flow + workers) | outputs = threads | load avg before → after |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        same = "yes" if r["digest"] == rows[0]["digest"] else "NO"
        cpu = f"{r['cpu_s']:.1f}" if r["cpu_s"] is not None else "n/a"
        print(
            f"| {r['config']} | {r['shards']} | {r['docs']} | {r['wall_s']:.1f} | {r['docs_per_s']:.1f} | "
            f"{r['docs_per_s'] / base:.2f}× | {cpu} | {same} | {r['load_before']} → {r['load_after']} |"
        )
    print("\nper-task cost of a no-op task: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in overhead.items()))
    print("cluster start-up (not in the timings): " + ", ".join(f"{k} {v:.1f} s" for k, v in startup.items()))
    print(
        f"records read per run: {rows[0]['records']}; documents left after the funnel: {rows[0]['final_docs']} "
        "(the input repeats the same pages, so dedup removes the copies)"
    )
    return 0 if all(r["digest"] == rows[0]["digest"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
