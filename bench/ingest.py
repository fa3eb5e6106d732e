"""Benchmark: ingest + extract throughput, lmpipe vs datatrove, on the same real WARC input.

    PYTHONPATH=. .venv/bin/python bench/ingest.py --peer-python /work/bench-venv-ingest/bin/python

Input: the real Common Crawl WARCs in ../shared/reference/commoncrawl (warcfile, clueweb-quirk,
whirlwind) concatenated and repeated to at least ``--mb`` MB of gzip (concatenated gzip
members are a valid WARC). Both sides read that one file:

- lmpipe: ``lm.data.warc.iter_records`` + ``lm.data.ingest.classify`` (resiliparse extraction
  of every HTML response, every record accounted for);
- datatrove: ``WarcReader`` + its default HTML extractor (``Trafilatura()``), run by the peer's
  own interpreter (``--peer-python``: a venv with ``datatrove[io,processing]``).

Reports records/s (all WARC records in the input / wall time), MB/s (compressed input),
documents extracted and docs/s, and the ratio. Note the two sides keep different documents:
datatrove's WarcReader trusts ``WARC-Identified-Payload-Type`` and drops records where it is
empty (all ClueWeb pages); lmpipe uses the HTTP Content-Type. Single process each, one after the other, on an otherwise idle machine if possible.
"""

from __future__ import annotations

import argparse
import json
import os
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


def run_ours(path: Path) -> dict:
    from lm.data.ingest import ExtractConfig, classify
    from lm.data.warc import iter_records

    cfg = ExtractConfig()
    t0 = time.perf_counter()
    n = kept = 0
    for rec in iter_records(str(path)):
        n += 1
        kept += classify(rec, cfg).status == "kept"
    t = time.perf_counter() - t0
    t1 = time.perf_counter()
    n_read = sum(1 for _ in iter_records(str(path)))
    t_read = time.perf_counter() - t1
    return {"records": n, "docs": kept, "seconds": t, "read_only_seconds": t_read, "read_only_records": n_read}


def run_peer(path: Path) -> dict:
    """Runs inside the peer's venv."""
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader

    reader = WarcReader(str(path.parent), glob_pattern=path.name)
    extractor = Trafilatura()
    t0 = time.perf_counter()
    docs = list(reader.run(None, 0, 1))
    t_read = time.perf_counter() - t0
    kept = sum(1 for _ in extractor.run(iter(docs), 0, 1))
    t = time.perf_counter() - t0
    return {"docs_read": len(docs), "docs": kept, "seconds": t, "read_only_seconds": t_read}


def count_records(path: Path) -> int:
    """All WARC records in the input, counted by gzip members (each CC record is one member)."""
    import zlib

    data, pos, n = path.read_bytes(), 0, 0
    while pos < len(data):
        d = zlib.decompressobj(31)
        d.decompress(data[pos:])
        n += 1
        pos = len(data) - len(d.unused_data)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="input size to reach by repetition (MB of gzip)")
    ap.add_argument("--peer-python", default="/work/bench-venv-ingest/bin/python", help="interpreter with datatrove installed")
    ap.add_argument("--peer-only", help=argparse.SUPPRESS)  # internal: run the peer on this file, print JSON
    args = ap.parse_args()
    if args.peer_only:
        print(json.dumps(run_peer(Path(args.peer_only))))
        return

    with tempfile.TemporaryDirectory(prefix="lmpipe-bench-") as tmp:
        path = Path(tmp) / "input.warc.gz"
        size, reps = build_input(path, args.mb)
        total = count_records(path)
        mb = size / 1e6
        print(f"input: {FILES} x {reps} = {mb:.1f} MB gzip, {total:,} WARC records")

        ours = run_ours(path)
        assert ours["records"] == total, (ours["records"], total)
        peer_proc = subprocess.run([args.peer_python, __file__, "--peer-only", str(path)], capture_output=True, text=True)
        if peer_proc.returncode != 0:
            sys.exit(f"peer failed:\n{peer_proc.stderr[-3000:]}")
        peer = json.loads(peer_proc.stdout.strip().splitlines()[-1])

    rows = [
        ("lmpipe (iter_records + resiliparse)", ours["seconds"], ours["docs"], ours["read_only_seconds"]),
        ("datatrove (WarcReader + Trafilatura)", peer["seconds"], peer["docs"], peer["read_only_seconds"]),
    ]
    print(f"{'':40s} {'seconds':>8s} {'records/s':>10s} {'MB/s':>7s} {'docs':>6s} {'docs/s':>7s} {'read-only s':>11s}")
    for name, s, docs, rs in rows:
        print(f"{name:40s} {s:8.2f} {total / s:10,.0f} {mb / s:7.2f} {docs:6,d} {docs / s:7.1f} {rs:11.2f}")
    print(f"ratio lmpipe/datatrove throughput: {peer['seconds'] / ours['seconds']:.2f}x "
          f"(read only: {peer['read_only_seconds'] / ours['read_only_seconds']:.2f}x)")


if __name__ == "__main__":
    if "--peer-only" not in sys.argv:
        sys.path.insert(0, str(REPO))
    main()
