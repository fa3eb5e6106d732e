"""Bytes the data flow writes per stage, against the extract stage.

Issue #16's target: the filter funnel (every stage after extract) writes at most 2.5x the
extract stage's bytes (five separate filter stages, each rewriting every document, made it
~7x). Runs the ``data`` flow on the demo sources (pywb's sample archives, the shared Common
Crawl samples, the Debian handbook pages where installed; or ``--source``) with the default
funnel and prints, per stage directory, its files and bytes (Parquet shards, rejects, markers,
manifest) and the ratio to extract.

    nice python bench/funnel_bytes.py --root /tmp/funnel-bytes
    nice python bench/funnel_bytes.py --root /tmp/fb --source crawl/ --set filters.materialize_each=true
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def dir_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def measure(root: Path, stages: dict[str, str]) -> list[dict]:
    rows = []
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for fp in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            n, b = dir_bytes(fp)
            rows.append({"stage": stage_dir.name, "fingerprint": fp.name, "files": n, "bytes": b})
    extract = sum(r["bytes"] for r in rows if r["stage"] == "extract")
    for r in rows:
        r["x_extract"] = round(r["bytes"] / extract, 3) if extract else None
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="a fresh artifact root (the flow writes there)")
    ap.add_argument("--source", action="append", help="inputs (default: the demo sources)")
    ap.add_argument("--set", action="append", default=[], help="config overrides key=value, as `lmpipe run`")
    args = ap.parse_args()
    from flows.data import DataConfig, data_flow
    from flows.demo import demo_sources
    from lm import config as lm_config

    root = Path(args.root).resolve()
    cfg = lm_config.build_config(
        DataConfig, None, [f"sources={json.dumps(args.source or demo_sources())}", f"root={root}", *args.set]
    )
    stages = data_flow(config=cfg)
    rows = measure(root, stages)
    extract = sum(r["bytes"] for r in rows if r["stage"] == "extract")
    funnel = sum(r["bytes"] for r in rows if r["stage"] not in ("extract", "funnel"))
    print(f"{'stage':<20} {'fingerprint':<18} {'files':>6} {'bytes':>12} {'x extract':>10}")
    for r in rows:
        print(f"{r['stage']:<20} {r['fingerprint']:<18} {r['files']:>6} {r['bytes']:>12,} {r['x_extract']:>10}")
    print(
        f"\nextract: {extract:,} bytes; funnel (every stage after "
        "extract, score cache included, funnel report excluded): "
        f"{funnel:,} bytes = {funnel / extract:.2f}x extract   (load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
