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
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lm.data.fasttext_format import model_labels

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
        raise ValueError(
            f"{str(path)!r} is not a fastText model (bad magic number); give a .bin/.ftz written by fastText"
        )
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
    return positive_probability(model, text, {label})


def positive_probability(model, text: str, positive: Collection[str]) -> float:
    """The summed probability of the ``positive`` labels (names without ``__label__``), in [0, 1]."""
    labels, probs = model.predict(one_line(text), k=-1)
    p = sum(float(pr) for lab, pr in zip(labels, probs) if lab.removeprefix("__label__") in positive)
    return min(1.0, max(0.0, p))


def positive_scores(model, texts: Iterable[str], positive: Collection[str]) -> list[float]:
    """``positive_probability`` of each text, in one call to fastText."""
    lines = [one_line(t) for t in texts]
    if not lines:
        return []
    labels, probs = model.predict(lines, k=-1)
    return [
        min(1.0, max(0.0, sum(float(p) for lab, p in zip(ls, ps) if lab.removeprefix("__label__") in positive)))
        for ls, ps in zip(labels, probs)
    ]


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def text_chunks(text: str, max_words: int) -> list[str]:
    """``text`` as sentences (lines and sentence ends), long ones cut to ``max_words`` words.

    A sentence-level classifier (Dolma's NSFW tagger, our default NSFW model) scores each
    chunk; a document's score is its highest chunk's, so one obscene sentence in a long
    page is not averaged away."""
    out = []
    for sentence in _SENTENCE.split(text[:MAX_CHARS]):
        words = sentence.split()
        out += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    return out or [""]


def max_chunk_scores(model, texts: Iterable[str], positive: Collection[str], max_words: int) -> list[float]:
    """For each text, the highest ``positive_probability`` of its ``text_chunks`` (one fastText call)."""
    chunked = [text_chunks(t, max_words) for t in texts]
    flat = positive_scores(model, [c for chunks in chunked for c in chunks], positive)
    out, i = [], 0
    for chunks in chunked:
        out.append(max(flat[i : i + len(chunks)]))
        i += len(chunks)
    return out


# --------------------------------------------------------------------------- label layouts

# Positive labels a kind's score sums, by layout; any other label of the model is negative.
# lmpipe's own; Dolma's Jigsaw models (nsfw/non-nsfw, toxic/non-toxic); DCLM's quality (hq/cc).
KNOWN_POSITIVE = {"quality": ("wiki", "hq"), "nsfw": ("nsfw",), "toxic": ("toxic",)}
LAYOUTS = {
    "lmpipe": {"quality": ("wiki", "cc"), "nsfw": ("nsfw", "non-nsfw"), "toxic": ("toxic", "non-toxic")},
    "dolma": {"nsfw": ("nsfw", "non-nsfw"), "toxic": ("toxic", "non-toxic")},
    "dclm": {"quality": ("hq", "cc")},
}


def model_label_names(model) -> list[str]:
    """A loaded model's labels without ``__label__``."""
    return [lab.removeprefix("__label__") for lab in model.get_labels()]


def positive_labels(model, kind: str, positive: Sequence[str] | None = None) -> frozenset[str]:
    """The labels of a loaded ``model`` that count as positive for ``kind`` (see ``choose_positive``)."""
    return choose_positive(model_label_names(model), kind, positive)


def check_model_labels(path: str | os.PathLike, kind: str, positive: Sequence[str] | None = None) -> frozenset[str]:
    """``choose_positive`` for the model file at ``path``, read without loading it: a config
    check that fails before any work starts."""
    return choose_positive(model_labels(path), kind, positive)


def choose_positive(labels: Sequence[str], kind: str, positive: Sequence[str] | None = None) -> frozenset[str]:
    """Which of a model's ``labels`` count as positive for ``kind``: ``positive`` if given, else
    the known ones for the layout (``KNOWN_POSITIVE``).

    Raises ValueError naming the model's labels when the given ones are not among them, when
    none of the known ones is (name them in the config), or when every label would be positive."""
    labels = list(labels)
    if positive:
        missing = sorted(set(positive) - set(labels))
        if missing:
            raise ValueError(f"positive label(s) {missing} are not labels of the {kind} model (its labels: {labels})")
        chosen = frozenset(positive)
    else:
        chosen = frozenset(KNOWN_POSITIVE.get(kind, ())) & set(labels)
        if not chosen:
            raise ValueError(
                f"the {kind} model's labels {labels} include none of {list(KNOWN_POSITIVE.get(kind, ()))}; "
                f"name its positive label(s) in the config (positive_labels)"
            )
    if chosen == set(labels):
        raise ValueError(f"every label of the {kind} model ({labels}) is positive: the score would always be 1")
    return chosen


# --------------------------------------------------------------------------- features

TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’")
_SHORT_LINE_WORDS = 6


def quality_features(text: str) -> str:
    """The text the quality classifier reads: each line prefixed by layout markers.

    A bag of words cannot see that a page is a list of short menu items; the markers
    ``__eol__`` (every line), ``__short__`` (fewer than 6 words) and ``__noend__`` (no
    terminal punctuation) make that layout a feature. A model trained without them simply
    ignores them: fastText drops tokens it has never seen.
    """
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        marks = ["__eol__"]
        if len(s.split()) < _SHORT_LINE_WORDS:
            marks.append("__short__")
        if not s.endswith(TERMINAL_PUNCTUATION + (":",)):
            marks.append("__noend__")
        out.append(" ".join(marks + [s]))
    return "\n".join(out)


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
        out[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": t + f_,
        }
    out["accuracy"] = round(correct / n, 4) if n else 0.0
    return out


def roc_auc(scores: Sequence[float], gold: Sequence[bool]) -> float | None:
    """Area under the ROC curve (ties count half); None when one class is absent."""
    pos = sum(gold)
    neg = len(gold) - pos
    if not pos or not neg:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum, i = 0.0, 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        rank_sum += sum(avg for k in range(i, j + 1) if gold[order[k]])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def evaluate_scores(
    scores: Sequence[float], gold: Sequence[bool], threshold: float, labels: tuple[str, str] = ("positive", "negative")
) -> dict:
    """Per-class precision / recall / F1 / support at ``threshold``, AUC, accuracy and the confusion table.

    ``gold[i]`` is True for the positive class (``labels[0]``); a score ≥ ``threshold`` predicts it."""
    pred = [s >= threshold for s in scores]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    tn = len(gold) - tp - fp - fn

    def prf(t: int, f_pos: int, f_neg: int) -> dict:
        precision = t / (t + f_pos) if t + f_pos else 0.0
        recall = t / (t + f_neg) if t + f_neg else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "support": t + f_neg}

    auc = roc_auc(scores, gold)
    return {
        labels[0]: prf(tp, fp, fn),
        labels[1]: prf(tn, fn, fp),
        "accuracy": round((tp + tn) / len(gold), 4) if gold else 0.0,
        "auc": round(auc, 4) if auc is not None else None,
        "threshold": threshold,
        # rows: gold, columns: predicted
        "confusion": {
            f"gold {labels[0]}": {labels[0]: tp, labels[1]: fn},
            f"gold {labels[1]}": {labels[0]: fp, labels[1]: tn},
        },
    }


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
            raise ValueError(
                f"label {label!r} must be one word (letters, digits, '_', '-'): fastText reads it as a token"
            )
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
                params = dict(
                    input=train_file,
                    epoch=epoch,
                    lr=lr,
                    wordNgrams=word_ngrams,
                    dim=dim,
                    minCount=min_count,
                    bucket=buckets,
                    minn=minn,
                    maxn=maxn,
                    thread=1,
                    seed=seed,
                    verbose=0,
                )
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

    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN_CODE, json.dumps(params), str(out)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise RuntimeError(
            f"fastText training on {params['input']} failed (exit {proc.returncode}): {' | '.join(tail)}"
        )
