"""Benchmark: ingest + extract throughput, lmpipe vs datatrove, on the same real WARC input.

    PYTHONPATH=. .venv/bin/python bench/ingest.py --peer-python /work/bench-venv-ingest/bin/python

Input: the real Common Crawl WARCs in ../shared/reference/commoncrawl (warcfile, clueweb-quirk,
whirlwind) concatenated and repeated to at least ``--mb`` MB of gzip (concatenated gzip
members are a valid WARC). Both sides read that one file:

- lmpipe: ``lm.data.warc.iter_records`` + ``lm.data.ingest.classify`` (resiliparse extraction
  of every HTML response, every record accounted for);
- datatrove: ``WarcReader`` + its default HTML extractor (``Trafilatura()``), run by the peer's
  own interpreter (``--peer-python``: a venv with ``datatrove[io,processing]``).

Reports records and MB (compressed input) per CPU-second (user + system, children included:
this machine is shared, so wall time is reported but noisy),
documents extracted and docs/s, and the ratio. Note the two sides keep different documents:
datatrove's WarcReader trusts ``WARC-Identified-Payload-Type`` and drops records where it is
empty (all ClueWeb pages); lmpipe uses the HTTP Content-Type. Single process each, one after
the other, on an otherwise idle machine if possible.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LMPIPE_REFERENCE", REPO.parent / "shared" / "reference"))
FILES = ["warcfile.warc.gz", "clueweb-quirk.warc.gz", "whirlwind.warc.gz"]


def build_input(out: Path, min_mb: float) -> tuple[int, int]:
    """Write the repeated input; return (bytes, repeats)."""
    blob = b"".join((REFERENCE / "commoncrawl" / f).read_bytes() for f in FILES)
    reps = max(1, int(min_mb * 1e6 // len(blob)) + 1)
    with open(out, "wb") as f:
        for _ in range(reps):
            f.write(blob)
    return out.stat().st_size, reps


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (datatrove extracts in a
    child process). On a shared, loaded machine this is the fair measure; wall time is noisy."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def run_ours(path: Path) -> dict:
    from lm.data.ingest import ExtractConfig, classify
    from lm.data.warc import iter_records

    cfg = ExtractConfig()
    t0, c0 = time.perf_counter(), cpu_seconds()
    n = kept = 0
    for rec in iter_records(str(path)):
        n += 1
        kept += classify(rec, cfg).status == "kept"
    t, c = time.perf_counter() - t0, cpu_seconds() - c0
    c1 = cpu_seconds()
    n_read = sum(1 for _ in iter_records(str(path)))
    return {
        "records": n,
        "docs": kept,
        "seconds": t,
        "cpu": c,
        "read_only_cpu": cpu_seconds() - c1,
        "read_only_records": n_read,
    }


def run_peer(path: Path, timeout: float) -> dict:
    """Runs inside the peer's venv."""
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    reader = WarcReader(str(path.parent), glob_pattern=path.name)
    extractor = Trafilatura(timeout=timeout)
    t0, c0 = time.perf_counter(), cpu_seconds()
    docs = list(reader.run(None, 0, 1))
    c_read = cpu_seconds() - c0
    kept = sum(1 for _ in extractor.run(iter(docs), 0, 1))  # the extractor's child exits at the end
    t, c = time.perf_counter() - t0, cpu_seconds() - c0
    stats = {k: v.total for k, v in extractor.stats.stats.items()} if hasattr(extractor.stats, "stats") else {}
    return {"docs_read": len(docs), "docs": kept, "seconds": t, "cpu": c, "read_only_cpu": c_read, "stats": stats}


def count_records(path: Path) -> int:
    """All WARC records in the input, counted by gzip members (each CC record is one member)."""
    import zlib

    n, d = 0, None
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            while chunk:  # a chunk may hold the ends and starts of several members
                d = d or zlib.decompressobj(31)
                d.decompress(chunk)
                chunk = d.unused_data if d.eof else b""
                if d.eof:
                    n, d = n + 1, None
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="input size to reach by repetition (MB of gzip)")
    ap.add_argument(
        "--peer-python", default="/work/bench-venv-ingest/bin/python", help="interpreter with datatrove installed"
    )
    ap.add_argument(
        "--peer-timeout", type=float, default=1.0, help="datatrove's per-document extraction timeout (its default: 1 s)"
    )
    ap.add_argument("--peer-only", help=argparse.SUPPRESS)  # internal: run the peer on this file, print JSON
    args = ap.parse_args()
    if args.peer_only:
        print(json.dumps(run_peer(Path(args.peer_only), args.peer_timeout), default=str))
        return

    with tempfile.TemporaryDirectory(prefix="lmpipe-bench-") as tmp:
        path = Path(tmp) / "input.warc.gz"
        size, reps = build_input(path, args.mb)
        total = count_records(path)
        mb = size / 1e6
        print(f"input: {FILES} x {reps} = {mb:.1f} MB gzip, {total:,} WARC records")

        ours = run_ours(path)
        assert ours["records"] == total, (ours["records"], total)
        cmd = [args.peer_python, __file__, "--peer-only", str(path), "--peer-timeout", str(args.peer_timeout)]
        peer_proc = subprocess.run(cmd, capture_output=True, text=True)
        if peer_proc.returncode != 0:
            sys.exit(f"peer failed:\n{peer_proc.stderr[-3000:]}")
        peer = json.loads(peer_proc.stdout.strip().splitlines()[-1])

    print(
        f"{'':38s} {'wall s':>7s} {'CPU s':>7s} {'records/CPU-s':>13s} "
        f"{'MB/CPU-s':>8s} {'docs':>6s} {'docs/CPU-s':>10s} {'read CPU s':>10s}"
    )
    for name, r in (("lmpipe (iter_records + resiliparse)", ours), ("datatrove (WarcReader + Trafilatura)", peer)):
        print(
            f"{name:38s} {r['seconds']:7.1f} {r['cpu']:7.1f} {total / r['cpu']:13,.0f} {mb / r['cpu']:8.2f} "
            f"{r['docs']:6,d} {r['docs'] / r['cpu']:10.1f} {r['read_only_cpu']:10.2f}"
        )
    print(
        f"datatrove: {peer['docs_read']:,} documents read, "
        f"{peer['docs']:,} extracted; extractor stats {peer.get('stats')}"
    )
    print(
        f"ratio lmpipe/datatrove, records per CPU-second: {peer['cpu'] / ours['cpu']:.2f}x "
        f"(read only: {peer['read_only_cpu'] / ours['read_only_cpu']:.2f}x); "
        f"wall-time ratio {peer['seconds'] / ours['seconds']:.2f}x"
    )


if __name__ == "__main__":
    if "--peer-only" not in sys.argv:
        sys.path.insert(0, str(REPO))
    main()
