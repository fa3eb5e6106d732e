"""fastText text classifiers: load by path, predict, train and evaluate.

One place for what language ID, the quality classifier and the harmful-content classifiers
share. Models are plain fastText ``.bin``/``.ftz`` files, so any model a user brings (the
Jigsaw-trained NSFW/toxicity models Dolma publishes, say) loads the same way as ours.

fastText reads one line per example, so text is flattened to one line before prediction
and training; very long documents are cut to ``MAX_CHARS`` (a classifier's verdict on the
first 100k characters is the verdict on the document, and it bounds time per record).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MAX_CHARS = 100_000
_WS = re.compile(r"\s+")
_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_lock = threading.Lock()


def one_line(text: str, max_chars: int = MAX_CHARS) -> str:
    """fastText input: whitespace (newlines, control characters' neighbours) collapsed to spaces."""
    # Control characters carry no meaning for a bag of n-grams; fastText splits on spaces.
    return _WS.sub(" ", _CTRL.sub(" ", text[:max_chars])).strip()


def _quiet_fasttext():
    import fasttext

    # fastText prints a deprecation warning on every load_model; it is noise in logs.
    fasttext.FastText.eprint = lambda *a, **k: None
    return fasttext


@lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int):
    ft = _quiet_fasttext()
    try:
        return ft.load_model(path)
    except ValueError as e:
        raise ValueError(f"{path} is not a fastText model ({e}); give a .bin/.ftz written by fastText") from e


def load_classifier(path: str | os.PathLike):
    """Load (once per process) a fastText model; clear errors for a missing or foreign file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"classifier model {str(path)!r} does not exist; give the path of a fastText .bin/.ftz")
    check_fasttext_file(p)
    return _load(str(p.resolve()), p.stat().st_mtime_ns)


# fastText files start with a magic number (int32 793712314) then a version (int32 12).
_FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")


def check_fasttext_file(path: str | os.PathLike) -> Path:
    """Raise ValueError/FileNotFoundError unless ``path`` looks like a fastText model (cheap: 4 bytes)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"classifier model {str(path)!r} does not exist; give the path of a fastText .bin/.ftz")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != _FASTTEXT_MAGIC:
        raise ValueError(f"{str(path)!r} is not a fastText model (bad magic number); give a .bin/.ftz written by fastText")
    return p


def predict(model, text: str) -> tuple[str, float]:
    """Top label (without ``__label__``) and its probability, clipped to [0, 1]."""
    line = one_line(text)
    labels, probs = model.predict(line, k=1)
    if not labels:
        return "unknown", 0.0
    return labels[0].removeprefix("__label__"), float(min(1.0, max(0.0, probs[0])))


def prob_of(model, text: str, label: str) -> float:
    """Probability the model gives ``label`` (0 if it does not rank it at all)."""
    labels, probs = model.predict(one_line(text), k=-1)
    for lab, p in zip(labels, probs):
        if lab.removeprefix("__label__") == label:
            return float(min(1.0, max(0.0, p)))
    return 0.0


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    model_path: str
    labels: list[str]
    num_train: int
    num_test: int
    metrics: dict  # label -> {precision, recall, f1, support}; "accuracy"
    # sha256 of the exact training lines given to fastText: two runs that differ here differ in
    # their data, not in training (which is deterministic; see _train_in_fresh_process)
    data_sha256: str = ""


def split_holdout(examples: Sequence[tuple], holdout: float, seed: int) -> tuple[list, list]:
    """Shuffle deterministically and hold out a fraction of each label (stratified).

    Examples given as ``(text, label, group)`` are split by group instead: examples that
    share a group (e.g. a passage and its altered copy) land on the same side, so the
    held-out figures are not inflated by near-copies seen in training.
    """
    rng = random.Random(seed)
    if examples and len(examples[0]) == 3:
        groups = sorted({g for _, _, g in examples})
        rng.shuffle(groups)
        held = set(groups[: round(len(groups) * holdout)])
        train = [(t, lab) for t, lab, g in examples if g not in held]
        test = [(t, lab) for t, lab, g in examples if g in held]
        rng.shuffle(train)
        return train, test
    by_label: dict[str, list] = {}
    for text, label in examples:
        by_label.setdefault(label, []).append((text, label))
    train, test = [], []
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        k = max(1, round(len(rows) * holdout)) if holdout > 0 and len(rows) > 1 else 0
        test += rows[:k]
        train += rows[k:]
    rng.shuffle(train)
    return train, test


def evaluate(model, examples: Iterable[tuple[str, str]]) -> dict:
    """Per-label precision / recall / F1 and overall accuracy on labelled examples."""
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    fn: dict[str, int] = {}
    n = correct = 0
    for text, gold in examples:
        pred, _ = predict(model, text)
        n += 1
        if pred == gold:
            correct += 1
            tp[gold] = tp.get(gold, 0) + 1
        else:
            fp[pred] = fp.get(pred, 0) + 1
            fn[gold] = fn.get(gold, 0) + 1
    out: dict = {}
    for label in sorted(set(tp) | set(fp) | set(fn)):
        t, p_, f_ = tp.get(label, 0), fp.get(label, 0), fn.get(label, 0)
        precision = t / (t + p_) if t + p_ else 0.0
        recall = t / (t + f_) if t + f_ else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "support": t + f_}
    out["accuracy"] = round(correct / n, 4) if n else 0.0
    return out


def train_classifier(
    examples: Sequence[tuple[str, str]],
    model_path: str | os.PathLike,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    epoch: int = 20,
    lr: float = 0.1,
    word_ngrams: int = 2,
    dim: int = 32,
    min_count: int = 1,
    buckets: int = 100_000,
    minn: int = 0,
    maxn: int = 0,
) -> TrainResult:
    """Train a fastText supervised model on (text, label) pairs; evaluate on a held-out split.

    Single-threaded with a fixed seed, in a fresh interpreter, so the same data gives the
    same model bytes whatever state this process is in. ``buckets`` (hashed n-gram rows) is
    kept small: fastText's default of 2M makes a 400 MB file.
    """
    labels = sorted({ex[1] for ex in examples})
    if len(labels) < 2:
        raise ValueError(f"training needs at least two labels, got {labels}; check the label column of the data")
    for label in labels:
        if not re.fullmatch(r"[\w-]+", label):
            raise ValueError(f"label {label!r} must be one word (letters, digits, '_', '-'): fastText reads it as a token")
    train, test = split_holdout(examples, holdout, seed)
    out = Path(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, dir=out.parent, encoding="utf-8") as f:
        for text, label in train:
            line = one_line(text)
            if line:
                f.write(f"__label__{label} {line}\n")
        train_file = f.name
    data_sha256 = hashlib.sha256(Path(train_file).read_bytes()).hexdigest()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with _lock:  # one training at a time per process: each already uses a core
            for attempt in range(4):
                params = dict(input=train_file, epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim, minCount=min_count,
                              bucket=buckets, minn=minn, maxn=maxn, thread=1, seed=seed, verbose=0)
                try:
                    _train_in_fresh_process(params, tmp)
                    break
                except RuntimeError as e:
                    # fastText diverges ("Encountered NaN") on small data with unigrams only
                    # or too high an lr: add bigrams first, then halve lr, as one would by hand.
                    if "NaN" not in str(e) or attempt == 3:
                        raise
                    if word_ngrams == 1:
                        word_ngrams = 2
                    else:
                        lr /= 2
        os.replace(tmp, out)
    finally:
        os.unlink(train_file)
        tmp.unlink(missing_ok=True)
    model = _quiet_fasttext().load_model(str(out))
    metrics = evaluate(model, test) if test else {}
    return TrainResult(str(out), labels, len(train), len(test), metrics, data_sha256)


# fastText's SGD is bit-sensitive to the calling thread's floating-point environment (a
# rounding mode set by any library changes the model bytes; checked in
# tests/lm/data/test_classifier.py), and the in-process result was seen to vary inside a
# long-lived test process. A new interpreter starts with a clean FP environment and heap,
# so training runs there. The code is a constant; parameters travel as JSON on argv.
_TRAIN_CODE = """
import json, sys
import fasttext
fasttext.FastText.eprint = lambda *a, **k: None
params, out = json.loads(sys.argv[1]), sys.argv[2]
try:
    fasttext.train_supervised(**params).save_model(out)
except RuntimeError as e:
    print(f"fastText: {e}", file=sys.stderr)
    sys.exit(3)
"""


def _train_in_fresh_process(params: dict, out: Path) -> None:
    """Run ``fasttext.train_supervised(**params)`` in a new interpreter; save the model to ``out``."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _TRAIN_CODE, json.dumps(params), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"fastText training on {params['input']} failed (exit {proc.returncode}): {' | '.join(tail)}")
