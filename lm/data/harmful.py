"""Harmful-content classifiers: NSFW and toxic speech, any fastText model by path.

``classify_nsfw`` / ``classify_toxic`` return ``(label, probability)`` with labels
``"nsfw" | "non-nsfw"`` and ``"toxic" | "non-toxic"`` (the labels of the Jigsaw-trained
models Dolma publishes, which load here unchanged). Without a path they use the default
models, trained on first use from weak labels (see ``lm.data.classifier_data``): demo
models, not production ones.
"""

from __future__ import annotations

import os

from lm.data.classifier import predict
from lm.data.quality import resolve_model


def classify_nsfw(text: str, model_path: str | os.PathLike | None = None) -> tuple[str, float]:
    return predict(resolve_model("nsfw", model_path), text)


def classify_toxic(text: str, model_path: str | os.PathLike | None = None) -> tuple[str, float]:
    return predict(resolve_model("toxic", model_path), text)
