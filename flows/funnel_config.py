"""Configuration of the filtering funnel: one section per stage, each switchable.

Every threshold has its valid range, so a bad value fails at validation naming the field
(``filters.quality.min_score: Input should be less than or equal to 1``), and a classifier
path that is missing or not a fastText model fails there too, before any work starts.
``stage_config()`` is what a stage's fingerprint hashes: ``enabled`` is not part of it.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from lm.config import Config


class _Section(Config):
    def stage_config(self) -> dict:
        return self.model_dump(exclude={"enabled"})


def _check_model(path: str | None, kind: str | None = None) -> str | None:
    """A missing or foreign model file, or one without ``kind``'s positive label, is a
    validation error of its field (pydantic wants ValueError)."""
    if path is not None:
        from lm.data.classifier import check_fasttext_file, check_model_labels

        try:
            check_fasttext_file(path)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from e
        if kind:
            check_model_labels(path, kind)
    return path


class LangIdConfig(_Section):
    enabled: bool = Field(True, description="run language identification (fastText lid.176)")
    languages: list[str] = Field(["en"], max_length=256, description="language codes to keep (ISO 639, e.g. en, de, zh); empty keeps all")
    min_score: float = Field(0.65, ge=0.0, le=1.0, description="minimum probability of the detected language")


class PIIConfig(_Section):
    enabled: bool = Field(True, description="mask personal information (never drops documents)")
    emails: bool = Field(True, description="replace email addresses with |||EMAIL_ADDRESS|||")
    phone_numbers: bool = Field(True, description="replace US phone numbers with |||PHONE_NUMBER|||")
    ips: bool = Field(True, description="replace IPv4 addresses with |||IP_ADDRESS|||")


class GopherThresholds(Config):
    min_words: int = Field(50, ge=0, le=10**9, description="fewest whitespace-separated words")
    max_words: int = Field(100_000, ge=1, le=10**9, description="most words")
    min_mean_word_length: float = Field(3.0, ge=0.0, description="smallest mean word length (characters)")
    max_mean_word_length: float = Field(10.0, gt=0.0, description="largest mean word length (characters)")
    max_ellipsis_line_fraction: float = Field(0.3, ge=0.0, le=1.0, description="largest fraction of lines ending in '...'")
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


class RulesConfig(_Section):
    enabled: bool = Field(True, description="run the rule-based quality filters")
    gopher: bool = Field(True, description="apply the Gopher rules")
    gopher_thresholds: GopherThresholds = Field(default_factory=GopherThresholds, description="Gopher rule thresholds")
    c4: bool = Field(True, description="apply C4's line and document rules (drops lines without terminal punctuation)")
    c4_options: C4Options = Field(default_factory=C4Options, description="C4 rule options")
    bad_words: bool = Field(True, description="drop documents with a word of the LDNOOBW list (C4)")
    bad_words_language: str = Field("en", description="which LDNOOBW list (en, de, fr, ...)")


class QualityConfig(_Section):
    enabled: bool = Field(True, description="run the fastText quality classifier")
    model_path: str | None = Field(None, description="fastText model with labels wiki/cc; empty = default model trained locally on first use")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="keep documents with P(wiki) at least this")

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, v):
        return _check_model(v, "quality")


class HarmfulConfig(_Section):
    enabled: bool = Field(True, description="run the harmful-content classifiers (see docs/filters.md for their held-out figures)")
    nsfw: bool = Field(True, description="drop documents the NSFW classifier flags (default model: held-out F1 0.89, 0.85 of disguised obscenities caught)")
    toxic: bool = Field(False, description="drop documents the toxicity classifier flags (off by default: the default model's held-out F1 is 0.67; give a stronger one by path)")
    nsfw_model_path: str | None = Field(None, description="fastText model with labels nsfw/non-nsfw (Dolma's Jigsaw model loads as is); empty = default model trained locally on first use")
    toxic_model_path: str | None = Field(None, description="fastText model with labels toxic/non-toxic (Dolma's Jigsaw model loads as is); empty = default model trained locally on first use")
    nsfw_max_score: float = Field(0.5, ge=0.0, le=1.0, description="drop documents with P(nsfw) at least this (scored per sentence: the highest decides)")
    toxic_max_score: float = Field(0.9, ge=0.0, le=1.0, description="drop documents with P(toxic) at least this")

    @field_validator("nsfw_model_path", "toxic_model_path")
    @classmethod
    def _models_exist(cls, v, info):
        return _check_model(v, info.field_name.removesuffix("_model_path"))


class ExactDedupConfig(_Section):
    enabled: bool = Field(True, description="drop lines that occur more than once in the corpus")
    drop_empty: bool = Field(True, description="drop documents left empty by line dedup")


class MinHashConfig(_Section):
    enabled: bool = Field(True, description="drop near-duplicate documents (MinHash + LSH)")
    num_hashes: int = Field(128, ge=1, le=4096, description="MinHash signature length")
    num_bands: int = Field(16, ge=1, le=4096, description="LSH bands; must divide num_hashes")
    ngrams: int = Field(5, ge=1, le=50, description="word n-gram length of the shingles")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="true Jaccard similarity at or above which documents are duplicates")
    seed: int = Field(1, ge=0, le=2**32 - 1, description="seed of the hash permutations")
    num_bucket_tasks: int = Field(4, ge=1, le=256, description="tasks the LSH bucketing is split into (by band)")

    @model_validator(mode="after")
    def _bands_divide(self):
        if self.num_hashes % self.num_bands:
            raise ValueError(f"num_bands={self.num_bands} must divide num_hashes={self.num_hashes}")
        return self


class FunnelConfig(Config):
    """Which funnel stages run, in this order, and their thresholds."""

    langid: LangIdConfig = Field(default_factory=LangIdConfig, description="language identification")
    pii: PIIConfig = Field(default_factory=PIIConfig, description="PII masking")
    rules: RulesConfig = Field(default_factory=RulesConfig, description="Gopher / C4 / bad-words rules")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="quality classifier")
    harmful: HarmfulConfig = Field(default_factory=HarmfulConfig, description="NSFW and toxicity classifiers")
    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig, description="exact line deduplication")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig, description="MinHash near-duplicate removal")
