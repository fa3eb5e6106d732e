"""Scale benchmark: the ``data`` flow on 100k, 300k and 1M web pages, beside datatrove and datasketch.

For each size N (corpus: ``bench/scale_corpus.py``, real text with planted duplicates and
low-quality pages in WARC files):

1. **ours, stage by stage**, each stage in its own child process on the same root, the one
   before it finished: ``extract`` (the data flow with ``filters: null``) and the filters
   (the data flow, dedup switched off) run as Prefect flows (their process holds the Prefect
   client too); the 7 dedup stages run from plain Python (``lm.data.dedup.stages``, no
   Prefect), on 2 threads like the flow's threads runner with ``max_workers: 2``. A child
   reports its own peak RSS and CPU seconds (``getrusage``); per stage: documents in, docs/s
   (wall), CPU s, peak RSS, bytes written per byte of its input.
2. **ours, the whole data flow** (Prefect, threads, ``max_workers: 2``) in one child on a
   fresh root: docs/s end to end (``--flow``).
3. **datatrove** (``bench/.venv-peers``, see ``bench/scale_peers.py``): WarcReader → the same
   extractor (``lm.data.extract.html_to_text``) → LanguageFilter → GopherQualityFilter →
   C4QualityFilter → JsonlWriter, then its 4-stage MinHash (5-grams, 16 buckets × 8 hashes),
   ``LocalPipelineExecutor(workers=2)``.
4. **datasketch** ``MinHashLSH`` (128 permutations, 16 bands × 8 rows, no verification) on
   the documents that enter our MinHash stage.

``--dedup-only`` runs the 7 dedup stages alone on the pages' text (the stage the corpus
builder writes beside the WARCs), for sizes where extract and the filters would take too long
here; the rows are then comparable across sizes for the dedup stages only.

Dedup quality on the planted near-duplicate pairs whose two documents both reach the dedup
step: a pair is a true duplicate when the Jaccard similarity of its 5-gram shingles on the
text the dedup sees is ≥ 0.8; it is found when exactly one of the two is dropped (both
dropped counts as a false positive). Exact copies are reported apart: line dedup removes
every copy of a repeated line, so both documents of an exact pair leave our pipeline at
``exact_dedup`` (as in CS336); datatrove and datasketch keep one.

Setup (once): ``python3 -m venv bench/.venv-peers && bench/.venv-peers/bin/pip install
"datatrove[io,processing]==0.10.1" resiliparse==2.0.0``. Run it ``nice``d; it records the load
average before and after each step::

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/scale.py --docs 100000 --flow --datasketch --datatrove
    PYTHONPATH=. nice -n 10 .venv/bin/python bench/scale.py --docs 1000000 --dedup-only --datasketch
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

FLOW_STAGES = ("extract", "filters")
THREADS = 2
MINHASH = {
    "num_hashes": 128,
    "num_bands": 16,
    "ngrams": 5,
    "threshold": 0.8,
    "num_bucket_tasks": None,
    "memory_mb": 512,
}


def peak_rss_mb() -> float:
    """This program's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's RSS at fork/exec
    into it, so a child of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def usage_self() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_mb": peak_rss_mb(), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1)}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- children


def funnel(dedup: bool) -> dict:
    """The default funnel, dedup on or off (the filters as configured by default)."""
    from flows.funnel_config import FunnelConfig

    cfg = FunnelConfig().model_dump()
    cfg["exact_dedup"]["enabled"] = cfg["minhash"]["enabled"] = dedup
    cfg["minhash"].update({k: v for k, v in MINHASH.items()})
    return cfg


def child_stage(name: str, root: str, corpus: str) -> dict:
    """Run one stage (the ones before it are complete); returns its manifest path and usage."""
    if name in FLOW_STAGES:
        from flows.data import DataConfig, data_flow

        cfg = {
            "sources": [str(Path(corpus) / "warc")],
            "root": root,
            "max_workers": THREADS,
            "filters": None if name == "extract" else funnel(dedup=False),
        }
        stages = data_flow(config=DataConfig.model_validate(cfg))
        out = {"stages": stages}
    else:
        from lm.data.dedup.stages import (
            EXACT_STAGES,
            ExactDedupConfig,
            MinHashConfig,
            run_exact_dedup,
            run_minhash,
            threads,
        )

        docs = json.loads(Path(root, "filters.json").read_text())["final"]
        if name in EXACT_STAGES:
            out = {"manifest": run_exact_dedup(root, ExactDedupConfig(), docs, threads(THREADS), stop_after=name)}
        else:
            exact = run_exact_dedup(root, ExactDedupConfig(), docs, threads(THREADS))
            out = {"manifest": run_minhash(root, MinHashConfig(**MINHASH), exact, threads(THREADS), stop_after=name)}
    return {**out, **usage_self()}


def child_flow(root: str, corpus: str) -> dict:
    from flows.data import DataConfig, data_flow

    stages = data_flow(
        config=DataConfig.model_validate(
            {
                "sources": [str(Path(corpus) / "warc")],
                "root": root,
                "max_workers": THREADS,
                "filters": funnel(dedup=True),
            }
        )
    )
    return {"stages": stages, **usage_self()}


def run_child(args: list[str], env: dict | None = None, python: str = sys.executable) -> dict:
    """Run ``bench/scale.py <args>`` (or another script) in a child; its JSON result + wall time."""
    t = time.time()
    before = load()
    proc = subprocess.run(
        [python, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "wall_s": round(time.time() - t, 1), "load_before": before, "load_after": load()}


# --------------------------------------------------------------------------- report


def stage_dir_bytes(manifest: str) -> int:
    d = Path(manifest).parent
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file())


def _shard_bytes(manifest: str) -> int:
    from lm.data.shards import read_manifest

    return sum(x["bytes"] for x in read_manifest(manifest)["shards"])


def stage_rows(results: dict, warc_bytes: int, dedup_input: str) -> list[dict]:
    """One row per stage: documents it reads, docs/s, CPU s, peak RSS, bytes written per byte
    of the documents it reads (for the reductions: per byte of their stage group's input)."""
    from lm.data.shards import read_manifest

    def docs_of(manifest: str) -> tuple[int, int]:
        return read_manifest(manifest)["counts"]["kept"], _shard_bytes(manifest)

    inputs = {
        "extract": (read_manifest(results["extract"]["manifests"][0])["counts"]["in"], warc_bytes)
        if "extract" in results
        else None,
        "filters": docs_of(results["extract"]["manifests"][0]) if "extract" in results else None,
    }
    for name in ("line_counts", "line_duplicates", "exact_dedup"):
        inputs[name] = docs_of(dedup_input)
    for name in ("minhash_signatures", "minhash_buckets", "minhash_clusters", "minhash"):
        inputs[name] = docs_of(results["exact_dedup"]["manifests"][0])
    rows = []
    for name, r in results.items():
        docs, nbytes = inputs[name]
        written = sum(stage_dir_bytes(p) for p in r["manifests"])
        rows.append(
            {
                "stage": name,
                "docs_in": docs,
                "docs_per_s": round(docs / r["wall_s"], 1),
                "wall_s": r["wall_s"],
                "cpu_s": r["cpu_s"],
                "peak_rss_mb": r["peak_rss_mb"],
                "bytes_per_input_byte": round(written / nbytes, 3),
                "load": r["load_before"],
            }
        )
    return rows


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| "
        + " | ".join("" if r.get(c) is None else f"{r[c]:,}" if isinstance(r[c], int) else str(r[c]) for c in columns)
        + " |"
        for r in rows
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def ours_by_stage(corpus: Path, root: Path, dedup_only: bool) -> dict:
    from lm.data.dedup.stages import STAGE_NAMES

    results = {}
    names = ([] if dedup_only else list(FLOW_STAGES)) + list(STAGE_NAMES)
    if dedup_only:  # the pages' text as a stage (bench/scale_corpus.py) stands for the filters' output
        root.mkdir(parents=True, exist_ok=True)
        (text,) = (corpus / "text" / "docs").glob("*/_manifest.json")
        (root / "filters.json").write_text(json.dumps({"final": str(text)}))
    for name in names:
        r = run_child([__file__, "--child-stage", name, "--root", str(root), "--corpus", str(corpus)])
        if name in FLOW_STAGES:
            stages = r["stages"]
            manifests = [stages["extract"]] if name == "extract" else [p for k, p in stages.items() if k != "extract"]
            if name == "filters":
                (root / "filters.json").write_text(json.dumps({"final": manifests[-1], "stages": stages}))
        else:
            manifests = [r["manifest"]]
        results[name] = {**r, "manifests": manifests}
        print(
            f"  {name}: {r['wall_s']} s wall, {r['cpu_s']} CPU s, {r['peak_rss_mb']} MB (load {r['load_before']})",
            flush=True,
        )
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, help="corpus size (built under --work/<N> when missing)")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("LMPIPE_SCALE_DIR", "/tmp/lmpipe-scale")))
    p.add_argument("--flow", action="store_true", help="also run the whole data flow end to end on a fresh root")
    p.add_argument(
        "--datasketch", action="store_true", help="also run datasketch MinHashLSH on our MinHash stage's input"
    )
    p.add_argument(
        "--datatrove", action="store_true", help="also run datatrove's pipeline (bench/.venv-peers) on the WARCs"
    )
    p.add_argument(
        "--dedup-only", action="store_true", help="only the 7 dedup stages, on the pages' text (no extract, no filters)"
    )
    p.add_argument("--child-stage", help=argparse.SUPPRESS)
    p.add_argument("--child-flow", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child_stage:
        print(json.dumps(child_stage(a.child_stage, a.root, a.corpus)))
        return
    if a.child_flow:
        print(json.dumps(child_flow(a.root, a.corpus)))
        return
    from scale_corpus import build
    from scale_peers import dedup_quality, run_datasketch, run_datatrove

    corpus = a.work / f"{a.docs}"
    if not (corpus / "corpus.json").exists():
        print(f"building {a.docs:,} pages under {corpus} (load {load()})", flush=True)
        build(a.docs, corpus)
    info = json.loads((corpus / "corpus.json").read_text())
    report = {"docs": a.docs, "corpus": info, "load_start": load()}
    print(f"ours, stage by stage (load {load()})", flush=True)
    root = corpus / ("dedup-root" if a.dedup_only else "root")
    ours = ours_by_stage(corpus, root, a.dedup_only)
    report["stages"] = stage_rows(ours, info["warc_bytes"], json.loads((root / "filters.json").read_text())["final"])
    report["ours_quality"] = dedup_quality(corpus, root, "ours")
    if a.flow:
        print(f"the data flow end to end (load {load()})", flush=True)
        flow_root = corpus / "flow-root"
        report["flow"] = run_child([__file__, "--child-flow", "--root", str(flow_root), "--corpus", str(corpus)])
        report["flow"]["docs_per_s"] = round(a.docs / report["flow"]["wall_s"], 1)
    if a.datasketch:
        print(f"datasketch (load {load()})", flush=True)
        report["datasketch"] = run_datasketch(corpus, root, run_child)
    if a.datatrove:
        print(f"datatrove (load {load()})", flush=True)
        report["datatrove"] = run_datatrove(corpus, run_child)
    report["load_end"] = load()
    (corpus / f"report{'-dedup' if a.dedup_only else ''}.json").write_text(json.dumps(report, indent=2))
    print(
        markdown(
            report["stages"],
            ["stage", "docs_in", "docs_per_s", "wall_s", "cpu_s", "peak_rss_mb", "bytes_per_input_byte", "load"],
        )
    )
    print(json.dumps({k: v for k, v in report.items() if k != "stages"}, indent=2))


if __name__ == "__main__":
    main()
