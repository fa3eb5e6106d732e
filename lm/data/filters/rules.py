"""Rule-based quality filters: Gopher rules, C4's line and document rules, LDNOOBW bad words.

One funnel filter, ``rules``, runs the enabled rule sets in that order; a reject names the
rule (``rules:gopher_too_few_words``, ``rules:c4_too_few_sentences``, ``rules:c4_bad_word``).
C4's line rules rewrite the text of the documents they keep.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from lm.config import Config
from lm.data.filters.base import Doc, Filter, FilterConfig
from lm.data.quality import c4_clean, find_bad_word, gopher_reason


class GopherThresholds(Config):
    min_words: int = Field(50, ge=0, le=10**9, description="fewest whitespace-separated words")
    max_words: int = Field(100_000, ge=1, le=10**9, description="most words")
    min_mean_word_length: float = Field(3.0, ge=0.0, description="smallest mean word length (characters)")
    max_mean_word_length: float = Field(10.0, gt=0.0, description="largest mean word length (characters)")
    max_ellipsis_line_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="largest fraction of lines ending in '...'"
    )
    min_alpha_word_fraction: float = Field(0.8, ge=0.0, le=1.0, description="smallest fraction of words with a letter")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_words > self.max_words:
            raise ValueError(f"min_words={self.min_words} must be <= max_words={self.max_words}")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError("min_mean_word_length must be <= max_mean_word_length")
        return self


class C4Options(Config):
    min_words_per_line: int = Field(3, ge=0, le=100_000, description="lines with fewer words are dropped")
    min_sentences: int = Field(5, ge=0, le=100_000, description="documents with fewer sentences left are dropped")
    drop_lorem_ipsum: bool = Field(True, description="drop documents containing 'lorem ipsum'")
    drop_curly_braces: bool = Field(True, description="drop documents containing '{' (code)")


class RulesConfig(FilterConfig):
    gopher: bool = Field(True, description="apply the Gopher rules")
    gopher_thresholds: GopherThresholds = Field(default_factory=GopherThresholds, description="Gopher rule thresholds")
    c4: bool = Field(True, description="apply C4's line and document rules (drops lines without terminal punctuation)")
    c4_options: C4Options = Field(default_factory=C4Options, description="C4 rule options")
    bad_words: bool = Field(True, description="drop documents with a word of the LDNOOBW list (C4)")
    bad_words_language: str = Field("en", description="which LDNOOBW list (en, de, fr, ...)")


class RulesFilter(Filter):
    name = "rules"
    Config = RulesConfig
    description = "Gopher / C4 / bad-words rules"

    def check(self) -> None:
        if self.config.bad_words:
            find_bad_word("", self.config.bad_words_language)  # ValueError naming a language without a list

    def keep(self, doc: Doc) -> tuple[bool, str | None]:
        cfg = self.config
        if cfg.gopher and (reason := gopher_reason(doc["text"], **cfg.gopher_thresholds.model_dump())):
            return False, reason
        if cfg.c4:
            cleaned, reason = c4_clean(doc["text"], **cfg.c4_options.model_dump())
            if cleaned is None:
                return False, reason
            doc["text"] = cleaned
        if cfg.bad_words and find_bad_word(doc["text"], cfg.bad_words_language):
            return False, "c4_bad_word"
        return True, None
