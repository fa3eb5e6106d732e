"""Held-out figures of the default classifiers beside the word-list baseline, and their speed.

For each kind (nsfw, toxic, quality) the default model is trained as ``classify_*`` would
train it (same data, seed and options; ``lm/data/default_classifiers.py``), then scored on
its held-out set: sources disjoint from the training ones, overlap removed by normalized
text hash, plus an ``obfuscated`` subset (the held-out positives with every listed word
disguised, another seed than training). Printed per kind: precision / recall / F1 per
class and AUC at the default threshold (0.5) on the held-out set without the obfuscated
subset, the confusion table, recall per subset (obfuscated included); for
nsfw and toxic the same for the simple word-list rule the funnel's ``rules`` stage applies
(C4's LDNOOBW bad words: score 1 when a listed word occurs). Last, throughput on the
held-out texts, one thread, docs per CPU second (the per-core figure on a shared machine)
and per wall second: fastText predict alone, and the score as the stage computes it
(disguises undone; NSFW per sentence).

    PYTHONPATH=. LMPIPE_REFERENCE=../shared/reference nice python bench/classifiers.py [--kinds nsfw toxic quality]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lm.data.classifier import evaluate_scores, load_classifier, positive_scores
from lm.data.default_classifiers import LABELS, heldout_set, score_texts, train_default_model
from lm.data.quality import find_bad_word

TARGETS = {"nsfw": "F1 >= 0.85, obfuscated recall >= 0.8", "toxic": "F1 >= 0.85, obfuscated recall >= 0.8",
           "quality": "F1 >= 0.9, spam scored cc"}


def confusion_lines(metrics: dict) -> list[str]:
    labels = [k for k in metrics if isinstance(metrics[k], dict) and "f1" in metrics[k]]
    rows = [f"| gold \\ predicted | {' | '.join(labels)} |", "|---|" + "---|" * len(labels)]
    for gold, counts in metrics["confusion"].items():
        rows.append(f"| {gold} | {' | '.join(str(counts[lab]) for lab in labels)} |")
    return rows


def report(name: str, scores: list[float], rows: list[tuple[str, str, str]], labels: tuple[str, str]) -> dict:
    """Figures on the held-out rows but the obfuscated ones; recall per subset, obfuscated included."""
    clean = [i for i, (_, _, sub) in enumerate(rows) if sub != "obfuscated"]
    m = evaluate_scores([scores[i] for i in clean], [rows[i][1] == labels[0] for i in clean], 0.5, labels)
    print(f"\n### {name}  (n={len(clean)}, AUC {m['auc']}, accuracy {m['accuracy']})")
    print("| class | precision | recall | F1 | support |\n|---|---|---|---|---|")
    for lab in labels:
        c = m[lab]
        print(f"| {lab} | {c['precision']} | {c['recall']} | {c['f1']} | {c['support']} |")
    print("\n".join(confusion_lines(m)))
    subsets = {}
    for sub in sorted({s for _, _, s in rows}):
        for lab in labels:
            members = [i for i, (_, gold, s) in enumerate(rows) if s == sub and gold == lab]
            if members:
                hit = sum((scores[i] >= 0.5) == (lab == labels[0]) for i in members)
                subsets[f"{sub}/{lab}"] = {"n": len(members), "recall": round(hit / len(members), 4)}
    print("recall per subset (share given its gold label): "
          + ", ".join(f"{k} {v['recall']} (n={v['n']})" for k, v in subsets.items()))
    return {**m, "subsets": subsets}


def throughput(fn, texts: list[str], repeats: int = 3) -> tuple[float, float]:
    """(docs per wall second, docs per CPU second) of ``fn(texts)`` in this thread, best of
    ``repeats``. On a shared machine the CPU figure is the per-core one: wall time counts
    the time other processes had the core."""
    wall = cpu = 0.0
    for _ in range(repeats):
        t, c = time.perf_counter(), time.thread_time()
        fn(texts)
        wall = max(wall, len(texts) / (time.perf_counter() - t))
        cpu = max(cpu, len(texts) / max(time.thread_time() - c, 1e-9))
    return wall, cpu


def bench_kind(kind: str, work: Path) -> dict:
    labels = LABELS[kind]
    t = time.perf_counter()
    result = train_default_model(kind, work / f"{kind}.bin")
    train_s = time.perf_counter() - t
    rows = heldout_set(kind)
    model = load_classifier(result.model_path)
    texts = [x for x, _, _ in rows]
    scores = score_texts(kind, model, texts, {labels[0]})
    print(f"\n## {kind}: trained on {result.num_train} examples in {train_s:.1f} s (data building included); "
          f"target: {TARGETS[kind]}")
    out = {"ours": report(f"{kind}: fastText (ours)", scores, rows, labels)}
    if kind != "quality":
        baseline = [1.0 if find_bad_word(x) else 0.0 for x in texts]
        out["word_list"] = report(f"{kind}: word list (C4 / LDNOOBW rule)", baseline, rows, labels)
    predict = throughput(lambda xs: positive_scores(model, xs, {labels[0]}), texts)
    stage = throughput(lambda xs: score_texts(kind, model, xs, {labels[0]}), texts)
    chars = sum(len(x) for x in texts) / len(texts)
    how = {"nsfw": "disguises undone, per sentence", "toxic": "disguises undone", "quality": "layout markers given"}[kind]
    print(f"\nthroughput, one thread, mean {chars:,.0f} chars/doc, docs per CPU second (per wall second): "
          f"fastText predict {predict[1]:,.0f} ({predict[0]:,.0f}); as the stage scores ({how}) {stage[1]:,.0f} ({stage[0]:,.0f})")
    out["docs_per_cpu_s"] = {"predict": round(predict[1]), "stage": round(stage[1])}
    out["docs_per_wall_s"] = {"predict": round(predict[0]), "stage": round(stage[0])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", default=["nsfw", "toxic", "quality"], choices=sorted(LABELS))
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    print(f"load average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-classifiers-") as tmp:
        figures = {kind: bench_kind(kind, Path(tmp)) for kind in args.kinds}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    print(f"\nload average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
