"""Settings of the dedup stages (the ``exact_dedup`` and ``minhash`` sections of the funnel).

``stage_config()`` is what a stage's fingerprint hashes: the settings that change the output.
The memory budget and the spill directory change only how the work is done (the output is the
same whatever they are), so they are not part of it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lm.config import Config

_MEMORY_DOC = (
    "memory budget (MB) of each reduction task: past it, hashes and pairs spill to disk by key range; "
    "the output does not depend on it (not part of the fingerprint)"
)
_SPILL_DOC = (
    "local directory for spill files; empty = the stage directory "
    "(local root) or the system temporary directory (remote root)"
)


class _DedupSection(Config):
    def stage_config(self) -> dict:
        """What the stage's fingerprint hashes: the settings that change the output."""
        return self.model_dump(exclude={"enabled", "memory_mb", "spill_dir", "num_partitions"})


class ExactDedupConfig(_DedupSection):
    enabled: bool = Field(True, description="drop lines that occur more than once in the corpus")
    drop_empty: bool = Field(True, description="drop documents left empty by line dedup")
    num_partitions: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="parallel tasks the corpus-wide line count is split "
        "into (by hash range); empty = one per 500,000 per-shard distinct line hashes",
    )
    memory_mb: float = Field(512, gt=0, le=1_048_576, description=_MEMORY_DOC)
    spill_dir: str | None = Field(None, description=_SPILL_DOC)


class MinHashConfig(_DedupSection):
    enabled: bool = Field(True, description="drop near-duplicate documents (MinHash + LSH)")
    num_hashes: int = Field(128, ge=1, le=4096, description="MinHash signature length")
    num_bands: int = Field(16, ge=1, le=4096, description="LSH bands; must divide num_hashes")
    ngrams: int = Field(5, ge=1, le=50, description="word n-gram length of the shingles")
    threshold: float = Field(
        0.8, gt=0.0, le=1.0, description="Jaccard similarity at or above which documents are duplicates"
    )
    seed: int = Field(1, ge=0, le=2**32 - 1, description="seed of the hash permutations")
    num_bucket_tasks: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="parallel tasks the LSH bucketing is split into, "
        "by band (at most num_bands), and the verification of candidate pairs, by shard; "
        "empty = one per million band keys",
    )
    verify: Literal["shingles", "signature"] = Field(
        "shingles",
        description="how candidate pairs are verified: shingles = exact Jaccard of the shingle sets (reads the "
        "paired documents again); signature = the fraction of equal signature values (cheaper, less precise)",
    )
    memory_mb: float = Field(512, gt=0, le=1_048_576, description=_MEMORY_DOC)
    spill_dir: str | None = Field(None, description=_SPILL_DOC)

    @model_validator(mode="after")
    def _bands_divide(self):
        if self.num_hashes % self.num_bands:
            raise ValueError(f"num_bands={self.num_bands} must divide num_hashes={self.num_hashes}")
        return self
