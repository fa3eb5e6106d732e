"""Document filters in datatrove's style: ``filter(doc) -> (keep, reason)``.

A filter may annotate the document it sees (``doc["language"]``, ``doc["quality_score"]``)
or rewrite its text (C4's line rules, PII masking); the stage writes kept documents with
those columns and rejected ones with ``reason``. Filters are built once per shard and
carry their configuration, so a stage task is a loop over rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from lm.data.quality import c4_clean, find_bad_word, gopher_reason

Doc = dict  # a row: id, url, source, text, ... (see lm.data.shards)


class LanguageFilter:
    """Keep documents whose fastText language is in ``languages`` with probability ≥ ``min_score``."""

    name = "langid"

    def __init__(self, languages: Sequence[str] = ("en",), min_score: float = 0.65):
        self.languages = set(languages)
        self.min_score = min_score

    def filter(self, doc: Doc) -> tuple[bool, str | None]:
        from lm.data.langid import identify_language

        lang, score = identify_language(doc["text"])
        doc["language"], doc["language_score"] = lang, round(score, 4)
        if self.languages and lang not in self.languages:
            return False, "language_not_kept"
        if score < self.min_score:
            return False, "language_low_score"
        return True, None


class PIIFormatter:
    """Mask emails, phone numbers and IPv4 addresses in place; never rejects."""

    name = "pii"

    def __init__(self, emails: bool = True, phone_numbers: bool = True, ips: bool = True):
        self.emails, self.phone_numbers, self.ips = emails, phone_numbers, ips

    def format(self, doc: Doc) -> dict[str, int]:
        from lm.data.pii import mask_emails, mask_ips, mask_phone_numbers

        counts = {}
        text = doc["text"]
        if self.emails:
            text, counts["emails_masked"] = mask_emails(text)
        if self.phone_numbers:
            text, counts["phone_numbers_masked"] = mask_phone_numbers(text)
        if self.ips:
            text, counts["ips_masked"] = mask_ips(text)
        doc["text"] = text
        return counts


class GopherQualityFilter:
    name = "gopher"

    def __init__(self, **thresholds):
        self.thresholds = thresholds

    def filter(self, doc: Doc) -> tuple[bool, str | None]:
        reason = gopher_reason(doc["text"], **self.thresholds)
        return reason is None, reason


class C4QualityFilter:
    """C4's rules; kept documents lose the lines the rules drop."""

    name = "c4"

    def __init__(self, **options):
        self.options = options

    def filter(self, doc: Doc) -> tuple[bool, str | None]:
        cleaned, reason = c4_clean(doc["text"], **self.options)
        if cleaned is None:
            return False, reason
        doc["text"] = cleaned
        return True, None


class BadWordsFilter:
    """Drop documents containing a word of the LDNOOBW list (C4's rule)."""

    name = "badwords"

    def __init__(self, language: str = "en"):
        self.language = language

    def filter(self, doc: Doc) -> tuple[bool, str | None]:
        word = find_bad_word(doc["text"], self.language)
        return (False, "c4_bad_word") if word else (True, None)


class QualityClassifierFilter:
    """Keep documents whose P(wiki) from the fastText quality classifier is ≥ ``min_score``."""

    name = "quality"

    def __init__(self, model_path: str | None = None, min_score: float = 0.5):
        self.model_path, self.min_score = model_path, min_score

    def filter(self, doc: Doc) -> tuple[bool, str | None]:
        from lm.data.quality import wiki_probability

        score = wiki_probability(doc["text"], self.model_path)
        doc["quality_score"] = round(score, 4)
        return (True, None) if score >= self.min_score else (False, "quality_low")


class HarmfulContentFilter:
    """Drop documents a harmful-content classifier (``nsfw`` or ``toxic``) flags with P ≥ ``max_score``."""

    def __init__(self, kind: str, model_path: str | None = None, max_score: float = 0.5):
        if kind not in ("nsfw", "toxic"):
            raise ValueError(f"kind {kind!r} must be 'nsfw' or 'toxic'")
        self.name, self.kind, self.model_path, self.max_score = kind, kind, model_path, max_score

    def filter(self, doc: Doc) -> tuple[bool, str | None]:
        from lm.data.harmful import harmful_score

        score = harmful_score(self.kind, doc["text"], self.model_path)
        doc[f"{self.kind}_score"] = round(score, 4)
        return (False, self.kind) if score >= self.max_score else (True, None)


# --------------------------------------------------------------------------- stages

# Columns a stage adds to the documents it keeps (name, Arrow type name).
ADDED_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "langid": [("language", "string"), ("language_score", "float64")],
    "quality": [("quality_score", "float64")],
    "harmful": [("nsfw_score", "float64"), ("toxic_score", "float64")],
}


def build_stage_filters(stage: str, cfg: dict) -> list:
    """The filters of a funnel stage, from its config dict (see ``flows/funnel.py``)."""
    if stage == "langid":
        return [LanguageFilter(cfg["languages"], cfg["min_score"])]
    if stage == "pii":
        return [PIIFormatter(cfg["emails"], cfg["phone_numbers"], cfg["ips"])]
    if stage == "rules":
        out: list = []
        if cfg["gopher"]:
            out.append(GopherQualityFilter(**cfg["gopher_thresholds"]))
        if cfg["c4"]:
            out.append(C4QualityFilter(**cfg["c4_options"]))
        if cfg["bad_words"]:
            out.append(BadWordsFilter(cfg["bad_words_language"]))
        return out
    if stage == "quality":
        return [QualityClassifierFilter(cfg["model_path"], cfg["min_score"])]
    if stage == "harmful":
        out = []
        if cfg["nsfw"]:
            out.append(HarmfulContentFilter("nsfw", cfg["nsfw_model_path"], cfg["nsfw_max_score"]))
        if cfg["toxic"]:
            out.append(HarmfulContentFilter("toxic", cfg["toxic_model_path"], cfg["toxic_max_score"]))
        return out
    raise ValueError(f"unknown filter stage {stage!r}; choose one of langid, pii, rules, quality, harmful")


def apply_filters(filters: Sequence, doc: Doc) -> tuple[bool, str | None, dict[str, int]]:
    """Run ``filters`` in order on ``doc`` (modified in place): (keep, reason, counts)."""
    counts: dict[str, int] = {}
    if not isinstance(doc.get("text"), str):
        return False, "no_text", counts
    for f in filters:
        if hasattr(f, "format"):
            for k, v in f.format(doc).items():
                counts[k] = counts.get(k, 0) + v
            continue
        keep, reason = f.filter(doc)
        if not keep:
            return False, reason, counts
    return True, None, counts
