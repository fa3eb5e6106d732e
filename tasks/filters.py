"""Prefect tasks of the ``filters`` stage (defined in ``lm.data.filters.stage``): one task
per shard runs every enabled filter in one pass (the flow commits the stage)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from lm.data.filters import stage


# NO_CACHE: the stage contract (markers, manifest, fingerprint) decides what is already done.
@task(
    name="filter-shard", retries=2, retry_delay_seconds=2, task_run_name="filters-shard-{index}", cache_policy=NO_CACHE
)
def filter_shard(root: str, plan: dict, input_manifest: str, index: int) -> int:
    """Filter shard ``index`` of ``input_manifest``; returns documents kept (-1: already done)."""
    return stage.filter_shard(root, plan, input_manifest, index)
