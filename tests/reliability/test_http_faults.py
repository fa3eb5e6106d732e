"""HTTP faults at flow level: the data flow reads real Common Crawl WARCs from a local server
(tests/fault_http.py on 127.0.0.1) that answers 503, stalls before answering or mid-body, resets connections,
trickles bodies, and sends bodies shorter than their Content-Length.

Survived means: the extract stage's shards are byte-identical to a fault-free run over the
same URLs, its rows equal a run on the same files read locally (only ``source`` names the
URL instead of the path), no id is lost or duplicated, and broken transfers were resumed
with a Range request from the byte reached (the server log shows it), not refetched from 0.
A permanent failure (404, faults beyond the retry budget) is counted in the manifest with
its URL and shown in the stage summary; every other file's records are all there.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from chaos_report import lost_and_duplicated  # tests/ is on sys.path (rootdir conftest)
from fault_http import FaultServer

from flows.data import DataConfig, _per_source_md, data_flow
from lm.data.shards import accounted, read_manifest, read_stage_table, shard_paths

NAMES = ["whirlwind.warc.gz", "warcfile.warc.gz", "clueweb-quirk.warc.gz"]
TIMEOUT_S = 0.5  # the client's socket timeout; stalls below last longer than this
HTTP = {"retries": 4, "backoff_s": 0.01, "timeout_s": TIMEOUT_S}


@pytest.fixture
def server():
    s = FaultServer()
    yield s
    s.close()


def run(root: Path, sources: list[str]) -> str:
    cfg = DataConfig(sources=sources, root=str(root), max_workers=2, filters=None, http=HTTP)
    return data_flow(config=cfg)["extract"]


def rows_without_source(manifest: str) -> list[dict]:
    """Rows without what names where they were read (``source``, and ``id``, which hashes it):
    the same records read from disk and over HTTP."""
    return [{k: v for k, v in r.items() if k not in ("source", "id")} for r in read_stage_table(manifest).to_pylist()]


def record_keys(rows: list[dict]) -> list[str]:
    return [f"{r['url']} {r['date']}" for r in rows]


@pytest.fixture
def local_run(reference):
    """The reference inputs: the same files read from disk."""
    return [str(reference / "commoncrawl" / n) for n in NAMES]


def random_faults(rng: random.Random, size: int) -> list[str]:
    """One or two faults that break a request (each consumed by one request, within the retry
    budget), sometimes followed by a slow but complete body."""
    out = []
    for kind in rng.sample(["503", "stall", "reset", "close", "stallbody", "longlen"], rng.randint(1, 2)):
        n = rng.randrange(1, size)
        out.append(
            {
                "503": "503",
                "stall": f"stall:{TIMEOUT_S * 3}",  # no answer within the timeout
                "reset": f"reset:{n}",
                "close": f"close:{n}",
                "stallbody": f"stallbody:{n}:{TIMEOUT_S * 3}",
                "longlen": f"longlen:{rng.randint(1, 5000)}",
            }[kind]
        )
    if rng.random() < 0.5:
        out.append(f"slow:{max(1, size // 8)}:0.01")
    return out


def test_transient_faults_are_retried_and_resumed(
    prefect_harness, reference, tmp_path, trials, chaos_record, local_run, server
):
    files = {n: (reference / "commoncrawl" / n).read_bytes() for n in NAMES}
    local = run(tmp_path / "local", local_run)
    urls = [server.add(f"/{n}", b) for n, b in files.items()]
    clean = run(tmp_path / "clean", urls)  # same URLs, no faults: the byte-for-byte reference
    want_rows = rows_without_source(local)
    want_ids = read_stage_table(clean, columns=["id"]).column("id").to_pylist()  # the same URLs: the same ids
    assert rows_without_source(clean) == want_rows and len(want_ids) > 40
    clean_bytes = [p.read_bytes() for p in shard_paths(clean)]

    survived = lost = duplicated = 0
    notes = []
    for trial in range(trials):
        rng = random.Random(trial)
        plan = {n: random_faults(rng, len(b)) for n, b in files.items()}
        for n, fs in plan.items():
            server.faults[f"/{n}"] = list(fs)
        server.log.clear()
        got = run(tmp_path / f"faulty-{trial}", urls)
        left = {p: q for p, q in server.faults.items() if q}
        m = read_manifest(got)
        got_rows = rows_without_source(got)
        lo, du = lost_and_duplicated(want_ids, read_stage_table(got, columns=["id"]).column("id").to_pylist())
        lost, duplicated = lost + lo, duplicated + du
        # A transfer cut at byte n > 0 resumes with "bytes=n-"; the file is never fetched
        # whole again once bytes arrived.
        resumed = {p for p, r in server.log if r and not r.startswith("bytes=0-")}
        # files whose transfer was actually cut after some bytes (the fault was used on a request)
        used = {n: fs[: len(fs) - len(server.faults[f"/{n}"])] for n, fs in plan.items()}
        broken = {
            f"/{n}"
            for n, fs in used.items()
            if any(f.split(":")[0] in ("reset", "close", "stallbody", "longlen") for f in fs)
        }
        refetched = [
            p
            for p in broken
            if [r for q, r in server.log if q == p].count(None)
            > 1 + sum(f == "503" or f.startswith("stall:") for f in used[p[1:]])
        ]
        same_bytes = [p.read_bytes() for p in shard_paths(got)] == clean_bytes
        # (a later fault may go unused: a mid-body fault on a Range request shorter than its
        # offset delivers everything, and no further request comes)
        first_used = all(server.faults[f"/{n}"] != fs for n, fs in plan.items())
        ok = (
            same_bytes
            and got_rows == want_rows
            and accounted(m)
            and not m["counts"]["failed"]
            and first_used
            and broken <= resumed
            and not refetched
        )
        survived += ok
        if not ok:
            notes.append(
                f"trial {trial}: plan {plan}; same bytes {same_bytes}; unresumed {sorted(broken - resumed)}; "
                f"refetched {refetched}; faults left {left}; failed {m['counts']['failed']}"
            )
    chaos_record(
        "HTTP 503/reset/close/stall/slow/short body",
        "extract (data flow over HTTP)",
        trials,
        survived,
        lost,
        duplicated,
        note="; ".join(notes) or "byte-identical shards; resumed with Range",
    )
    assert survived == trials, notes
    assert lost == 0 and duplicated == 0


def test_permanent_failure_is_reported_and_nothing_else_lost(
    prefect_harness, reference, tmp_path, chaos_record, local_run, server
):
    """A 404 and a file that keeps answering 503 beyond every retry (the client's and the
    task's): both counted with their URL; the other file's records are all kept."""
    good = reference / "commoncrawl" / "warcfile.warc.gz"
    good_url = server.add("/warcfile.warc.gz", good.read_bytes(), faults=["reset:5000"])
    gone_url = server.url + "/gone.warc.gz"
    # (retries + 1) requests per task attempt, 3 task attempts (TASK_RETRIES = 2)
    dead_url = server.add(
        "/dead.warc.gz",
        (reference / "commoncrawl" / "whirlwind.warc.gz").read_bytes(),
        faults=["503"] * (HTTP["retries"] + 1) * 3,
    )
    local = run(tmp_path / "local", [str(good)])
    got = run(tmp_path / "faulty", [good_url, gone_url, dead_url])
    m = read_manifest(got)
    want = rows_without_source(local)
    lost, duplicated = lost_and_duplicated(record_keys(want), record_keys(rows_without_source(got)))
    failed_urls = {f["id"]: f["kind"] for f in m["failed_ids"]}
    summary = _per_source_md(got)
    ok = (
        m["counts"]["failed"] == {"source_not_found": 1, "source_error": 1}
        and failed_urls == {gone_url: "source_not_found", dead_url: "source_error"}
        and gone_url in summary
        and dead_url in summary
        and accounted(m)
    )
    chaos_record(
        "HTTP 404 and 503 beyond retry budget",
        "extract (data flow over HTTP)",
        1,
        int(ok),
        lost,
        duplicated,
        note="failed URLs in manifest failed_ids and summary; other sources complete",
    )
    assert m["counts"]["failed"] == {"source_not_found": 1, "source_error": 1}
    assert failed_urls == {gone_url: "source_not_found", dead_url: "source_error"}
    assert gone_url in summary and dead_url in summary
    assert accounted(m)
    assert lost == 0 and duplicated == 0
