"""Prefect tasks for the dedup stages: each wraps one step of ``lm.data.dedup.stages``.

The stages, their steps and their order live in ``lm.data.dedup.stages`` (runnable without
Prefect); here every step becomes a retried task (a transient read error, e.g. on a network
file system, should not fail the run; a retry redoes only what has no marker), and
``map_calls(runner, wait)`` runs a step's calls as task runs on a task runner.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import task

from lm.data.dedup import stages as S

num_shards = S.num_shards


def _wrap(step: Callable[..., None], name: str, run_name: str):
    t = task(step, name=name, retries=2, task_run_name=run_name)
    t.__doc__ = step.__doc__
    return t


line_counts_shard = _wrap(S.line_counts_shard, "line-counts-shard", "line-counts-{index}")
line_duplicates_partition = _wrap(S.line_duplicates_partition, "line-duplicates", "line-duplicates-{index}")
line_duplicates_finish = _wrap(S.line_duplicates_finish, "line-duplicates-finish", "line-duplicates-finish")
exact_dedup_shard = _wrap(S.exact_dedup_shard, "exact-dedup-shard", "exact-dedup-{index}")
signatures_shard = _wrap(S.signatures_shard, "minhash-signatures-shard", "minhash-signatures-{index}")
buckets_partition = _wrap(S.buckets_partition, "minhash-buckets", "minhash-buckets-{index}")
clusters_features_shard = _wrap(S.clusters_features_shard, "minhash-features-shard", "minhash-features-{index}")
clusters_verify_group = _wrap(S.clusters_verify_group, "minhash-verify", "minhash-verify-{index}")
clusters_components = _wrap(S.clusters_components, "minhash-clusters", "minhash-clusters")
minhash_filter_shard = _wrap(S.minhash_filter_shard, "minhash-filter-shard", "minhash-filter-{index}")

TASKS = {
    t.fn: t
    for t in (
        line_counts_shard,
        line_duplicates_partition,
        line_duplicates_finish,
        exact_dedup_shard,
        signatures_shard,
        buckets_partition,
        clusters_features_shard,
        clusters_verify_group,
        clusters_components,
        minhash_filter_shard,
    )
}


def map_calls(runner, wait: Callable[[list, str], None]) -> S.MapCalls:
    """A ``map_calls`` for ``lm.data.dedup.stages`` that submits each step's calls as runs of
    its task on ``runner`` and ``wait``s for them (``wait(futures, label)``)."""

    def run(label: str, fn: Callable[..., None], calls: list[dict]) -> None:
        if calls:
            wait(runner.map(TASKS[fn], {k: [c[k] for c in calls] for k in calls[0]}), label)

    return run
