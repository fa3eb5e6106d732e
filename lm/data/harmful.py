"""Harmful-content classifiers: NSFW and toxic speech, any fastText model by path.

``classify_nsfw`` / ``classify_toxic`` return ``(label, probability)`` with labels
``"nsfw" | "non-nsfw"`` and ``"toxic" | "non-toxic"`` (the labels of the Jigsaw-trained
models Dolma publishes, which load here unchanged). ``harmful_score`` is the probability
the harmful stage thresholds: the summed probability of the model's positive labels
(known ones, or named in the config for any other ``__label__`` model). Without a path
they use the default models (see ``lm.data.default_classifiers`` for their data).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lm.data.classifier import KNOWN_POSITIVE, model_label_names, positive_labels, predict
from lm.data.default_classifiers import harmful_text, resolve_model, score_texts

HARMFUL_KINDS = ("nsfw", "toxic")


def _kind(kind: str) -> str:
    if kind not in HARMFUL_KINDS:
        raise ValueError(f"kind {kind!r} must be one of {HARMFUL_KINDS}")
    return kind


def _classify(kind: str, text: str, model_path: str | os.PathLike | None) -> tuple[str, float]:
    model = resolve_model(kind, model_path)
    labels = model_label_names(model)
    positive = KNOWN_POSITIVE[kind][0]
    if positive in labels and len(labels) == 2:  # ours, Dolma's: the stage's score decides
        p = score_texts(kind, model, [text], {positive})[0]
        negative = next(lab for lab in labels if lab != positive)
        return (positive, p) if p >= 0.5 else (negative, 1.0 - p)
    return predict(model, harmful_text(text))  # any other labels: the model's top one


def classify_nsfw(text: str, model_path: str | os.PathLike | None = None) -> tuple[str, float]:
    """``("nsfw" | "non-nsfw", probability)``; scored on sentences, the highest one decides."""
    return _classify("nsfw", text, model_path)


def classify_toxic(text: str, model_path: str | os.PathLike | None = None) -> tuple[str, float]:
    """``("toxic" | "non-toxic", probability)`` of the whole text."""
    return _classify("toxic", text, model_path)


def harmful_score(
    kind: str, text: str, model_path: str | os.PathLike | None = None, positive: Sequence[str] | None = None
) -> float:
    """P(``kind``) of ``text`` as the harmful stage scores it: disguises undone
    (``harmful_text``), the summed probability of the model's positive labels, and for nsfw
    the highest over the text's sentences."""
    model = resolve_model(_kind(kind), model_path)
    return score_texts(kind, model, [text], positive_labels(model, kind, positive))[0]
