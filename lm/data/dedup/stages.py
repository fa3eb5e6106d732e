"""The dedup stages over Parquet shards, runnable from plain Python (no Prefect).

Exact line dedup, three stages:
  ``line_counts``     (one task per shard)       distinct line hashes of the shard + counts, by hash
  ``line_duplicates`` (one task per hash range)  hashes seen more than once in the corpus, one
                                                 shard per range, + ``duplicates.u64`` (all of
                                                 them, sorted, for memory-mapped lookups)
  ``exact_dedup``     (one task per shard)       documents without those lines; documents left
                                                 empty are rejected (``empty_after_line_dedup``)
MinHash, four stages:
  ``minhash_signatures`` (per shard)             row, id, shingle count, signature (uint32 × num_hashes)
  ``minhash_buckets``    (per group of bands)    candidate pairs sharing a band key
  ``minhash_clusters``   (features per shard, verification per group of shards, components
                          once)                  for each shard, the documents to drop and the
                                                 one each duplicates (id, shard, row, Jaccard)
  ``minhash``            (per shard)             documents minus the dropped (``near_duplicate``)
Documents are addressed as (shard, row) of the stage input to MinHash.

Every reduction holds at most ``memory_mb`` (it spills by key range past it, see
``lm.data.dedup.spill``); the output does not depend on the budget nor on which runner runs
the tasks. ``run_exact_dedup`` / ``run_minhash`` run the stages in order; ``map_calls`` says
how one step's calls run: one after the other (``serial``, the default here) or as Prefect
tasks on a task runner (``flows/funnel.py``).

    from lm.data.dedup.stages import MinHashConfig, run_minhash
    final_manifest = run_minhash("outputs", MinHashConfig(memory_mb=256), "outputs/exact_dedup/<fp>/_manifest.json")
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from lm.data.dedup.config import ExactDedupConfig, MinHashConfig
from lm.data.dedup.exact_stages import (
    EXACT_VERSIONS,
    exact_dedup_shard,
    exact_dedup_stage,
    line_counts_shard,
    line_counts_stage,
    line_duplicates_finish,
    line_duplicates_partition,
    line_duplicates_stage,
    line_partitions,
)
from lm.data.dedup.minhash_stages import (
    MINHASH_VERSIONS,
    bucket_tasks,
    buckets_partition,
    buckets_stage,
    clusters_components,
    clusters_features_shard,
    clusters_stage,
    clusters_verify_group,
    minhash_filter_shard,
    minhash_stage,
    signatures_shard,
    signatures_stage,
)
from lm.data.dedup.stage_files import num_shards, remove_tree

MapCalls = Callable[[str, Callable[..., None], list[dict]], None]
EXACT_STAGES = ("line_counts", "line_duplicates", "exact_dedup")
MINHASH_STAGES = ("minhash_signatures", "minhash_buckets", "minhash_clusters", "minhash")
STAGE_NAMES = EXACT_STAGES + MINHASH_STAGES


def serial(label: str, fn: Callable[..., None], calls: list[dict]) -> None:
    """Run a step's calls one after the other in this process (``map_calls`` without Prefect)."""
    for kwargs in calls:
        fn(**kwargs)


def threads(num_workers: int) -> MapCalls:
    """A ``map_calls`` running a step's calls on ``num_workers`` threads of this process."""

    def run(label: str, fn: Callable[..., None], calls: list[dict]) -> None:
        with ThreadPoolExecutor(num_workers) as pool:
            for future in [pool.submit(fn, **kwargs) for kwargs in calls]:
                future.result()

    return run


def _run(
    st, map_calls: MapCalls, steps: list[tuple[str, Callable[..., None], list[dict]]], num_shards: int | None
) -> str:
    """Run ``steps`` (label, step, calls) in order unless ``st`` is complete, then commit it
    (``num_shards`` None: the last step commits)."""
    if not st.is_complete():
        for label, fn, calls in steps:
            map_calls(label, fn, calls)
        if num_shards is not None:
            st.commit(num_shards=num_shards)
    return str(st.manifest_path)


def _check_stop(stop_after: str | None, names: tuple[str, ...]) -> None:
    if stop_after is not None and stop_after not in names:
        raise ValueError(f"stop_after={stop_after!r} is not one of these stages: {', '.join(names)}")


def run_exact_dedup(
    root: str, cfg: ExactDedupConfig, docs: str, map_calls: MapCalls = serial, stop_after: str | None = None
) -> str:
    """line_counts → line_duplicates → exact_dedup on the stage ``docs``; returns the manifest
    path of the last stage run (``stop_after`` names one to end with)."""
    _check_stop(stop_after, EXACT_STAGES)
    n = num_shards(docs)
    counts = _run(
        line_counts_stage(root, docs),
        map_calls,
        [("line_counts", line_counts_shard, [dict(root=root, docs=docs, index=i) for i in range(n)])],
        n,
    )
    if stop_after == "line_counts":
        return counts
    parts = line_partitions(cfg, counts)
    fixed = dict(root=root, cfg=cfg, counts=counts, num_partitions=parts)
    dups = _run(
        line_duplicates_stage(root, counts, parts),
        map_calls,
        [
            ("line_duplicates", line_duplicates_partition, [dict(fixed, index=i) for i in range(parts)]),
            ("line_duplicates_finish", line_duplicates_finish, [dict(root=root, counts=counts, num_partitions=parts)]),
        ],
        None,
    )
    if stop_after == "line_duplicates":
        return dups
    calls = [dict(root=root, cfg=cfg, docs=docs, duplicates=dups, index=i) for i in range(n)]
    return _run(exact_dedup_stage(root, cfg, docs, dups), map_calls, [("exact_dedup", exact_dedup_shard, calls)], n)


def run_minhash(
    root: str, cfg: MinHashConfig, docs: str, map_calls: MapCalls = serial, stop_after: str | None = None
) -> str:
    """minhash_signatures → minhash_buckets → minhash_clusters → minhash on the stage ``docs``;
    returns the manifest path of the deduplicated documents (or of ``stop_after``)."""
    _check_stop(stop_after, MINHASH_STAGES)
    n = num_shards(docs)
    sigs = _run(
        signatures_stage(root, cfg, docs),
        map_calls,
        [("minhash_signatures", signatures_shard, [dict(root=root, cfg=cfg, docs=docs, index=i) for i in range(n)])],
        n,
    )
    if stop_after == "minhash_signatures":
        return sigs
    tasks = bucket_tasks(cfg, sigs)
    buckets = _run(
        buckets_stage(root, cfg, sigs, tasks),
        map_calls,
        [
            (
                "minhash_buckets",
                buckets_partition,
                [dict(root=root, cfg=cfg, signatures=sigs, num_tasks=tasks, index=g) for g in range(tasks)],
            )
        ],
        tasks,
    )
    if stop_after == "minhash_buckets":
        return buckets
    common, groups = dict(root=root, cfg=cfg, docs=docs, signatures=sigs, buckets=buckets), min(tasks, n)
    clusters_st = clusters_stage(root, cfg, buckets, docs)
    clusters = _run(
        clusters_st,
        map_calls,
        [
            ("minhash_features", clusters_features_shard, [dict(common, index=i) for i in range(n)]),
            (
                "minhash_verify",
                clusters_verify_group,
                [dict(common, num_groups=groups, index=g) for g in range(groups)],
            ),
            ("minhash_components", clusters_components, [dict(common, num_groups=groups)]),
        ],
        n,
    )
    remove_tree(clusters_st.path / "work")  # the steps' hand-over files: not part of the output
    if stop_after == "minhash_clusters":
        return clusters
    calls = [dict(root=root, cfg=cfg, docs=docs, clusters_manifest=clusters, index=i) for i in range(n)]
    return _run(minhash_stage(root, cfg, docs, clusters), map_calls, [("minhash", minhash_filter_shard, calls)], n)


__all__ = [
    "EXACT_VERSIONS",
    "MINHASH_VERSIONS",
    "EXACT_STAGES",
    "MINHASH_STAGES",
    "STAGE_NAMES",
    "ExactDedupConfig",
    "MinHashConfig",
    "MapCalls",
    "serial",
    "threads",
    "num_shards",
    "line_counts_stage",
    "line_duplicates_stage",
    "exact_dedup_stage",
    "line_partitions",
    "line_counts_shard",
    "line_duplicates_partition",
    "line_duplicates_finish",
    "exact_dedup_shard",
    "run_exact_dedup",
    "signatures_stage",
    "buckets_stage",
    "clusters_stage",
    "minhash_stage",
    "signatures_shard",
    "buckets_partition",
    "clusters_features_shard",
    "clusters_verify_group",
    "clusters_components",
    "minhash_filter_shard",
    "run_minhash",
]
