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

from pydantic import Field

from lm.config import Config
from lm.data.dedup.config import ExactDedupConfig, MinHashConfig
from lm.data.filters import filters_config_model

FiltersConfig = filters_config_model()  # the registry as it is when the flows are imported


class _Section(Config):
    def stage_config(self) -> dict:
        """What the stage's fingerprint hashes: every field but ``enabled``."""
        return self.model_dump(exclude={"enabled"})


class FunnelConfig(FiltersConfig):
    """Which funnel stages run, in this order, and their settings: the filters (one pass),
    exact line dedup, MinHash."""

    exact_dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig, description="exact line deduplication")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig, description="MinHash near-duplicate removal")

    def filter_settings(self) -> dict:
        """The filter stage's part (what ``lm.data.filters.stage.plan_filters`` takes)."""
        return self.model_dump(mode="json", exclude={"exact_dedup", "minhash"})
