"""Precision and recall of ``minhash_dedup`` on near-duplicates of known Jaccard similarity.

From real documents (the Python reference topics that ship with CPython and the CS336
Wikipedia-like reference article, cut into ~120-word documents), each document gets one
variant made by random word substitutions, insertions and deletions at a rate drawn from a
range (0-6% of words), sometimes with its sentences shuffled. The true Jaccard similarity of every (original,
variant) pair is measured on the same shingles minhash_dedup uses; a pair is a true duplicate
iff it is ≥ the threshold. A pair is predicted duplicate iff minhash_dedup drops one of the two
and keeps the other; dropping a document because of any other document is a false positive.
Each configuration runs twice: candidate pairs verified on their shingle sets (exact Jaccard,
the default) and on their signatures (``verify="signature"``: the fraction of equal values),
which shows what the cheaper check costs in precision.

    PYTHONPATH=. LMPIPE_REFERENCE=../shared/reference python bench/dedup_quality.py
"""

from __future__ import annotations

import argparse
import random
import re
import tempfile
import time
from pathlib import Path

from lm.data.classifier_data import reference_dir, reference_texts
from lm.data.dedup.minhash import jaccard, minhash_dedup, shingles


def base_documents(words_per_doc: int = 120) -> list[str]:
    texts = list(reference_texts())
    ref = reference_dir()
    if ref:
        texts.append((ref / "assignment4-data/fixtures/high_quality_wiki_reference.txt").read_text())
    docs = []
    for t in texts:
        words = t.split()
        for i in range(0, len(words) - words_per_doc // 2, words_per_doc):
            docs.append(" ".join(words[i : i + words_per_doc]))
    # The reference topics repeat some passages: keep only bases unlike every other base, so
    # the only true duplicates are the variants we make.
    sets = [shingles(d, 5) for d in docs]
    keep = []
    for i, s in enumerate(sets):
        if all(jaccard(s, sets[k]) < 0.3 for k in keep):
            keep.append(i)
    return [docs[i] for i in keep]


def variant(doc: str, rate: float, shuffle: bool, vocab: list[str], rng: random.Random) -> str:
    if shuffle:
        sents = re.split(r"(?<=[.!?])\s+", doc)
        rng.shuffle(sents)
        doc = " ".join(sents)
    words = doc.split()
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(vocab))  # substitute
        elif r < 2 * rate / 3:
            out += [w, rng.choice(vocab)]  # insert
        elif r < rate:
            continue  # delete
        else:
            out.append(w)
    return " ".join(out)


def run(
    num_hashes: int, num_bands: int, ngrams: int, threshold: float, seed: int = 0, verify: str = "shingles"
) -> dict:
    rng = random.Random(seed)
    bases = base_documents()
    vocab = sorted({w for d in bases for w in d.split()})
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        truth, sims = {}, []
        for i, doc in enumerate(bases):
            v = variant(doc, rate=rng.uniform(0.0, 0.06), shuffle=rng.random() < 0.3, vocab=vocab, rng=rng)
            j = jaccard(shingles(doc, ngrams), shingles(v, ngrams))
            (src / f"{i:05d}-a.txt").write_text(doc)
            (src / f"{i:05d}-b.txt").write_text(v)
            truth[i] = j >= threshold
            sims.append(j)
        t = time.time()
        kept = {
            p.name
            for p in minhash_dedup(
                sorted(src.iterdir()),
                Path(tmp) / "out",
                num_hashes=num_hashes,
                num_bands=num_bands,
                ngrams=ngrams,
                threshold=threshold,
                verify=verify,
            )
        }
        seconds = time.time() - t
    tp = fp = fn = 0
    for i, dup in truth.items():
        a, b = f"{i:05d}-a.txt" in kept, f"{i:05d}-b.txt" in kept
        predicted = a != b
        if not a and not b:
            fp += 1  # both dropped: merged with some other document
        if predicted and dup:
            tp += 1
        elif predicted and not dup:
            fp += 1
        elif dup:
            fn += 1
    return {
        "num_hashes": num_hashes,
        "num_bands": num_bands,
        "verify": verify,
        "pairs": len(truth),
        "true_dups": sum(truth.values()),
        "jaccard_range": (round(min(sims), 3), round(max(sims), 3)),
        "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
        "recall": round(tp / (tp + fn), 4) if tp + fn else 1.0,
        "docs_per_s": round(2 * len(truth) / seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--ngrams", type=int, default=5)
    args = p.parse_args()
    print("| num_hashes | num_bands | verify | pairs | true dups | Jaccard range | precision | recall | docs/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for h, b in [(100, 10), (128, 16), (128, 32), (500, 50)]:
        for verify in ("shingles", "signature"):
            r = run(h, b, args.ngrams, args.threshold, verify=verify)
            print(
                f"| {h} | {b} | {verify} | {r['pairs']} | {r['true_dups']} "
                f"| {r['jaccard_range']} | {r['precision']} | {r['recall']} "
                f"| {r['docs_per_s']} |"
            )


if __name__ == "__main__":
    main()
