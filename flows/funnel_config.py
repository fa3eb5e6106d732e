"""Configuration of the filtering funnel: the filter stage's sections, then the two dedup stages.

The filter sections come from the filter registry (``lm.data.filters.FILTERS``): one per
registered filter, its model and description taken from the filter class, in chain order,
plus ``materialize_each``. So a new filter appears here, in the UI form and in
``configs/filters.yaml``'s schema without editing this file. Every threshold has its valid
range, so a bad value fails at validation naming the field
(``filters.quality.min_score: Input should be less than or equal to 1``), and a classifier
path that is missing or not a fastText model fails there too, before any work starts.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from lm.config import Config
from lm.data.filters import filters_config_model

FiltersConfig = filters_config_model()  # the registry as it is when the flows are imported


class _Section(Config):
    def stage_config(self) -> dict:
        """What the stage's fingerprint hashes: every field but ``enabled``."""
        return self.model_dump(exclude={"enabled"})


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


class FunnelConfig(FiltersConfig):
    """Which funnel stages run, in this order, and their settings: the filters (one pass),
    exact line dedup, MinHash."""

    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig, description="exact line deduplication")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig, description="MinHash near-duplicate removal")

    def filter_settings(self) -> dict:
        """The filter stage's part (what ``lm.data.filters.stage.plan_filters`` takes)."""
        return self.model_dump(mode="json", exclude={"exact_dedup", "minhash"})
