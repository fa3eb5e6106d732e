"""Exact line dedup over Parquet shards: the ``line_counts``, ``line_duplicates`` and
``exact_dedup`` stages (definitions and per-shard / per-range steps; ``lm.data.dedup.stages``
runs them in order).

  ``line_counts``     (per shard)       distinct line hashes of the shard + counts, sorted by hash
  ``line_duplicates`` (per hash range)  hashes seen more than once in the corpus: one shard per
                                        range, summed out of core within ``memory_mb``; then
                                        ``duplicates.u64``, all of them sorted, for lookups
  ``exact_dedup``     (per shard)       documents without those lines (looked up through memory
                                        maps of ``duplicates.u64``); documents left empty are
                                        rejected (``empty_after_line_dedup``), no text ``no_text``

Versions: ``line_counts`` 2 (rows sorted by hash; v1 kept first-seen order), ``line_duplicates``
2 (partitioned by hash range + ``duplicates.u64``); ``exact_dedup`` 1, unchanged output.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from lm.data.dedup.config import ExactDedupConfig
from lm.data.dedup.exact import drop_duplicate_lines, iter_duplicate_hashes, line_hash_counts
from lm.data.dedup.spill import group_budget, key_ranges, member_of_sorted_file
from lm.data.dedup.stage_files import input_shard, parquet_file, spill_dir, text_bytes, write_local_then_commit
from lm.data.shards import Stage, read_manifest, read_marker
from lm.data.storage import local_copy

ROWS_PER_PARTITION = 500_000  # (hash, count) rows per line_duplicates task when num_partitions is empty (8 MB)

EXACT_VERSIONS = {"line_counts": "2", "line_duplicates": "2", "exact_dedup": "1"}
COUNTS_SCHEMA = pa.schema([("hash", pa.uint64()), ("count", pa.int64())])
HASH_SCHEMA = pa.schema([("hash", pa.uint64())])
LOOKUP_NAME = "duplicates.u64"


def line_counts_stage(root: str, docs: str) -> Stage:
    return Stage(root, "line_counts", version=EXACT_VERSIONS["line_counts"], config={}, inputs=[docs])


def line_duplicates_stage(root: str, counts: str, num_partitions: int) -> Stage:
    return Stage(
        root,
        "line_duplicates",
        version=EXACT_VERSIONS["line_duplicates"],
        config={"num_partitions": num_partitions},
        inputs=[counts],
    )


def exact_dedup_stage(root: str, cfg: ExactDedupConfig, docs: str, duplicates: str) -> Stage:
    return Stage(
        root, "exact_dedup", version=EXACT_VERSIONS["exact_dedup"], config=cfg.stage_config(), inputs=[docs, duplicates]
    )


def line_partitions(cfg: ExactDedupConfig, counts: str) -> int:
    """How many hash ranges the corpus-wide count is split into."""
    if cfg.num_partitions:
        return cfg.num_partitions
    return max(1, math.ceil(read_manifest(counts).counts.kept / ROWS_PER_PARTITION))


def line_counts_shard(root: str, docs: str, index: int) -> None:
    """Pass 1 on one shard: its distinct line hashes (ascending) and how often each occurs."""
    st = line_counts_stage(root, docs)
    if st.shard_done(index):
        return
    table, path = input_shard(docs, index, ["text"])
    hashes, counts = line_hash_counts(table.column("text").to_pylist())
    with st.open_shard(index, schema=COUNTS_SCHEMA, source=path) as w:
        w.count_in(len(hashes))
        w.write_table(pa.table({"hash": hashes, "count": counts}, schema=COUNTS_SCHEMA))


def _counts_in_range(counts: str, lo: int, hi: int):
    """(hashes, counts) of every line_counts shard restricted to [lo, hi), one row group at a
    time; row groups whose hash range misses it are not read (shards are sorted by hash)."""
    m = read_manifest(counts)
    for i, s in enumerate(m.shards):
        pf = parquet_file(m.shard_path(i), s.num_bytes)
        for g in range(pf.num_row_groups):
            stats = pf.metadata.row_group(g).column(0).statistics
            if stats is not None and stats.has_min_max and (stats.max < lo or stats.min >= hi):
                continue
            t = pf.read_row_group(g, columns=["hash", "count"])
            h, c = t.column("hash").to_numpy(), t.column("count").to_numpy()
            keep = (h >= np.uint64(lo)) & (h <= np.uint64(hi - 1))
            yield h[keep], c[keep]


def line_duplicates_partition(root: str, cfg: ExactDedupConfig, counts: str, num_partitions: int, index: int) -> None:
    """The corpus-wide count for hash range ``index`` of ``num_partitions``: its duplicate hashes."""
    st = line_duplicates_stage(root, counts, num_partitions)
    if st.shard_done(index):
        return
    lo, hi = key_ranges(num_partitions)[index]
    st.ensure_dir()
    with spill_dir(st.path, cfg.spill_dir, f"{index:05d}") as tmp, st.open_shard(index, schema=HASH_SCHEMA) as w:
        for dups in iter_duplicate_hashes(
            _counts_in_range(counts, lo, hi), memory_mb=cfg.memory_mb, spill_dir=tmp, lo=lo, hi=hi
        ):
            w.count_in(len(dups))
            w.write_table(pa.table({"hash": dups}, schema=HASH_SCHEMA))


def line_duplicates_finish(root: str, counts: str, num_partitions: int) -> None:
    """Concatenate the ranges (ascending) into ``duplicates.u64`` and commit the stage."""
    st = line_duplicates_stage(root, counts, num_partitions)
    if st.is_complete():
        return
    shards = [read_marker(st.marker_path(i))["shard"] for i in range(num_partitions)]
    total = 0

    def write(f) -> None:
        nonlocal total
        for shard in shards:
            for batch in parquet_file(st.path / shard["name"], shard["bytes"]).iter_batches(columns=["hash"]):
                values = batch.column(0).to_numpy().astype("<u8")
                f.write(values.data)
                total += len(values)

    entry = write_local_then_commit(st.path / LOOKUP_NAME, write)
    st.commit(
        num_shards=num_partitions,
        extra={"lookup": {"name": LOOKUP_NAME, "count": total}, "files_sha256": {LOOKUP_NAME: entry["sha256"]}},
    )


def exact_dedup_shard(root: str, cfg: ExactDedupConfig, docs: str, duplicates: str, index: int) -> None:
    """Pass 2 on one shard: drop its lines found in ``duplicates.u64`` (memory-mapped in windows)."""
    st = exact_dedup_stage(root, cfg, docs, duplicates)
    if st.shard_done(index):
        return
    dm = read_manifest(duplicates)
    lookup = dm.extra["lookup"]
    table, path = input_shard(docs, index)
    texts = table.column("text").to_pylist()
    dups_file = local_copy(dm.file_path(lookup["name"]), dm.extra["files_sha256"][lookup["name"]])
    budget = group_budget(cfg.memory_mb)
    new, dropped = drop_duplicate_lines(texts, lambda h: member_of_sorted_file(dups_file, lookup["count"], h, budget))
    has_text = np.array([isinstance(t, str) for t in texts], dtype=bool)
    empty = np.array([isinstance(t, str) and cfg.drop_empty and not t.strip() for t in new], dtype=bool)
    out = table.set_column(
        table.schema.get_field_index("text"),
        table.schema.field("text"),
        pa.array(new, type=table.schema.field("text").type),
    )
    rejected = ~has_text | empty
    reasons = np.where(has_text, "empty_after_line_dedup", "no_text")[rejected]
    kept = out.filter(pa.array(~rejected))
    with st.open_shard(index, schema=table.schema, source=path) as w:
        w.count_in(table.num_rows)
        w.reject_table(out.filter(pa.array(rejected)), pa.array(reasons.tolist(), pa.string()))
        w.write_table(kept)
        if has_text.any():  # the counters appear exactly when the row-by-row version added to them
            w.add_count("lines_dropped", int(dropped.sum()))
        if kept.num_rows:
            w.add_count("text_bytes_kept", text_bytes(kept))
