"""MinHash near-duplicate removal over Parquet shards: the ``minhash_signatures``,
``minhash_buckets``, ``minhash_clusters`` and ``minhash`` stages (definitions and steps;
``lm.data.dedup.stages`` runs them in order). Documents are numbered across the input's
shards in order (``row_offsets``); outputs name them as (shard, row).

  ``minhash_signatures`` (per shard)         row, id, shingle count, signature (uint32 × num_hashes),
                                             one uint64 column per band key
  ``minhash_buckets``    (per group of bands) candidate pairs (a_shard, a_row, b_shard, b_row) of
                                             documents sharing a band key, distinct, sorted;
                                             keys and pairs spill past ``memory_mb``
  ``minhash_clusters``   three steps, the first two writing to ``work/`` in the stage directory
                                             (removed once the stage is committed):
      features (per shard)                   shingle sets (or signatures) of its paired documents
      verify (per group of first shards)     candidate pairs streamed per shard pair, reading only
                                             the paired documents' features (memory-mapped)
      components (once)                      connected components of the verified pairs; one
                                             output shard per input shard: the documents to drop,
                                             the one each duplicates (shard, row, id), the Jaccard
  ``minhash``            (per shard)         documents minus the dropped ones (``near_duplicate``)

All four stages are at version 2 (v1: datasketch signatures, per-band Python dicts, one
in-memory clusters task with a single output shard).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from lm.data.dedup.config import MinHashConfig
from lm.data.dedup.minhash import (
    Features,
    band_keys,
    candidate_pairs,
    clusters,
    shingle_sets,
    signatures,
    similarity,
    unique_pairs,
)
from lm.data.dedup.spill import KeySpill, group_budget
from lm.data.dedup.stage_files import (
    arrays_done,
    input_shard,
    load_arrays,
    parquet_file,
    row_offsets,
    save_arrays,
    spill_dir,
    text_bytes,
)
from lm.data.shards import Stage, read_manifest

MINHASH_VERSIONS = {"minhash_signatures": "2", "minhash_buckets": "2", "minhash_clusters": "2", "minhash": "2"}
PAIR_SCHEMA = pa.schema([(k, pa.int64()) for k in ("a_shard", "a_row", "b_shard", "b_row")])
DROP_SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("row", pa.int64()),
        ("id", pa.string()),
        ("duplicate_of_shard", pa.int64()),
        ("duplicate_of_row", pa.int64()),
        ("duplicate_of_id", pa.string()),
        ("jaccard", pa.float64()),
    ]
)


KEYS_PER_TASK = 1_000_000  # band keys per minhash_buckets task when num_bucket_tasks is empty (16 MB)


def band_column(band: int) -> str:
    return f"band_{band:03d}"


def signature_schema(num_hashes: int, num_bands: int) -> pa.Schema:
    """row, id, shingle count, the signature, and one uint64 column per band key (a bucket
    task reads only its bands' columns)."""
    return pa.schema(
        [
            ("row", pa.int64()),
            ("id", pa.string()),
            ("shingles", pa.int64()),
            ("signature", pa.list_(pa.uint32(), num_hashes)),
            *[(band_column(b), pa.uint64()) for b in range(num_bands)],
        ]
    )


def _signature_config(cfg: MinHashConfig) -> dict:
    return {"num_hashes": cfg.num_hashes, "num_bands": cfg.num_bands, "ngrams": cfg.ngrams, "seed": cfg.seed}


def signatures_stage(root: str, cfg: MinHashConfig, docs: str) -> Stage:
    return Stage(
        root,
        "minhash_signatures",
        version=MINHASH_VERSIONS["minhash_signatures"],
        config=_signature_config(cfg),
        inputs=[docs],
    )


def bucket_tasks(cfg: MinHashConfig, signatures: str) -> int:
    """How many band groups the bucketing is split into (``num_bucket_tasks``, or by corpus size)."""
    if cfg.num_bucket_tasks:
        return min(cfg.num_bucket_tasks, cfg.num_bands)
    needed = -(-read_manifest(signatures).counts.kept * cfg.num_bands // KEYS_PER_TASK)
    # The smallest divisor of num_bands that is enough: every task gets as many bands.
    return next(d for d in range(1, cfg.num_bands + 1) if cfg.num_bands % d == 0 and d >= min(needed, cfg.num_bands))


def buckets_stage(root: str, cfg: MinHashConfig, signatures: str, num_tasks: int) -> Stage:
    config = {**_signature_config(cfg), "num_bucket_tasks": num_tasks}
    return Stage(
        root, "minhash_buckets", version=MINHASH_VERSIONS["minhash_buckets"], config=config, inputs=[signatures]
    )


def clusters_stage(root: str, cfg: MinHashConfig, buckets: str, docs: str) -> Stage:
    config = {"ngrams": cfg.ngrams, "threshold": cfg.threshold, "verify": cfg.verify}
    return Stage(
        root, "minhash_clusters", version=MINHASH_VERSIONS["minhash_clusters"], config=config, inputs=[buckets, docs]
    )


def minhash_stage(root: str, cfg: MinHashConfig, docs: str, clusters_manifest: str) -> Stage:
    return Stage(
        root,
        "minhash",
        version=MINHASH_VERSIONS["minhash"],
        config=cfg.stage_config(),
        inputs=[docs, clusters_manifest],
    )


def _signature_matrix(table: pa.Table, num_hashes: int) -> np.ndarray:
    return table.column("signature").combine_chunks().flatten().to_numpy().reshape(-1, num_hashes)


def _shard_of(offsets: np.ndarray, docs: np.ndarray) -> np.ndarray:
    return np.searchsorted(offsets, docs, side="right") - 1


def signatures_shard(root: str, cfg: MinHashConfig, docs: str, index: int) -> None:
    """Signature of every document of shard ``index`` (no shingles: count 0, never a candidate)."""
    st = signatures_stage(root, cfg, docs)
    if st.shard_done(index):
        return
    table, path = input_shard(docs, index, ["id", "text"])
    sig, count = signatures(table.column("text").to_pylist(), cfg.num_hashes, cfg.ngrams, cfg.seed)
    keys = band_keys(sig, cfg.num_bands)
    schema = signature_schema(cfg.num_hashes, cfg.num_bands)
    out = pa.table(
        {
            "row": np.arange(table.num_rows, dtype=np.int64),
            "id": table.column("id").cast(pa.string()),
            "shingles": count,
            "signature": pa.FixedSizeListArray.from_arrays(pa.array(sig.reshape(-1)), cfg.num_hashes),
            **{band_column(b): keys[:, b] for b in range(cfg.num_bands)},
        },
        schema=schema,
    )
    with st.open_shard(index, schema=schema, source=path) as w:
        w.count_in(table.num_rows)
        w.write_table(out)


def buckets_partition(root: str, cfg: MinHashConfig, signatures: str, num_tasks: int, index: int) -> None:
    """Candidate pairs among the band keys of bands ``index::num_tasks`` (only those columns are read)."""
    st = buckets_stage(root, cfg, signatures, num_tasks)
    if st.shard_done(index):
        return
    m = read_manifest(signatures)
    offsets = row_offsets(m)
    bands = [band_column(b) for b in range(index, cfg.num_bands, num_tasks)]

    def keys():
        for shard, s in enumerate(m.shards):
            t = parquet_file(m.shard_path(shard), s.num_bytes).read(columns=["shingles", *bands])
            live = np.flatnonzero(t.column("shingles").to_numpy() > 0)
            for band in bands:
                yield t.column(band).to_numpy()[live], live + offsets[shard]

    st.ensure_dir()
    with spill_dir(st.path, cfg.spill_dir, f"{index:05d}") as tmp, st.open_shard(index, schema=PAIR_SCHEMA) as w:
        for a, b in candidate_pairs(keys(), int(offsets[-1]), cfg.memory_mb, tmp):
            sa, sb = _shard_of(offsets, a), _shard_of(offsets, b)
            w.count_in(len(a))
            w.write_table(pa.table([sa, a - offsets[sa], sb, b - offsets[sb]], schema=PAIR_SCHEMA))


def _iter_pairs(buckets: str):
    """(a_shard, a_row, b_shard, b_row) arrays of every candidate pair, a batch at a time."""
    m = read_manifest(buckets)
    for i, s in enumerate(m.shards):
        for batch in parquet_file(m.shard_path(i), s.num_bytes).iter_batches(batch_size=1 << 16):
            yield tuple(batch.column(k).to_numpy() for k in PAIR_SCHEMA.names)


def _work(st: Stage):
    return st.path / "work"


def clusters_features_shard(
    root: str, cfg: MinHashConfig, docs: str, signatures: str, buckets: str, index: int
) -> None:
    """What verification compares for the documents of shard ``index`` that are in a pair."""
    st = clusters_stage(root, cfg, buckets, docs)
    name = f"features-{index:05d}"
    if arrays_done(_work(st), name):
        return
    rows = [np.empty(0, np.int64)]
    for a_shard, a_row, b_shard, b_row in _iter_pairs(buckets):
        rows += [a_row[a_shard == index], b_row[b_shard == index]]
    rows = np.unique(np.concatenate(rows))
    if cfg.verify == "shingles":
        table, _ = input_shard(docs, index, ["text"])
        values, offsets = shingle_sets(table.column("text").take(pa.array(rows)).to_pylist(), cfg.ngrams)
        save_arrays(_work(st), name, ids=rows, values=values, offsets=offsets)
    else:
        table, _ = input_shard(signatures, index, ["signature"])
        save_arrays(_work(st), name, ids=rows, values=_signature_matrix(table, cfg.num_hashes)[rows])


def _features(st: Stage, shard: int) -> Features:
    arrays = load_arrays(_work(st), f"features-{shard:05d}")
    return Features(arrays["ids"], arrays["values"], arrays.get("offsets"))


def clusters_verify_group(
    root: str, cfg: MinHashConfig, docs: str, signatures: str, buckets: str, num_groups: int, index: int
) -> None:
    """Verify the distinct candidate pairs whose first document's shard is ``index`` modulo
    ``num_groups``, one (shard, shard) block at a time; store those at or above the threshold."""
    st = clusters_stage(root, cfg, buckets, docs)
    name = f"edges-{index:05d}"
    if arrays_done(_work(st), name):
        return
    offsets = row_offsets(read_manifest(docs))
    kept_a, kept_b, kept_j, candidates = [], [], [], 0
    cache: dict[int, Features] = {}

    def features(shard: int) -> Features:
        if shard not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            cache[shard] = _features(st, shard)
        return cache[shard]

    with (
        spill_dir(st.path, cfg.spill_dir, f"verify-{index:05d}") as tmp,
        KeySpill(
            tmp / "pairs",
            {"key": np.uint64, "other": np.int64},
            group_budget(cfg.memory_mb),
            0,
            max(1, int(offsets[-1])),
        ) as spill,
    ):
        for a_shard, a_row, b_shard, b_row in _iter_pairs(buckets):
            mine = a_shard % num_groups == index
            spill.add(
                key=(offsets[a_shard[mine]] + a_row[mine]).astype(np.uint64), other=offsets[b_shard[mine]] + b_row[mine]
            )
        for group in spill.groups():
            a, b = unique_pairs(group["key"].astype(np.int64), group["other"])
            candidates += len(a)
            sa, sb = _shard_of(offsets, a), _shard_of(offsets, b)
            order = np.lexsort((b, a, sb, sa))
            a, b, sa, sb = a[order], b[order], sa[order], sb[order]
            bounds = np.flatnonzero(np.r_[True, (sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1]), True])
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                fa, fb = features(int(sa[lo])), features(int(sb[lo]))
                j = similarity(fa, a[lo:hi] - offsets[sa[lo]], fb, b[lo:hi] - offsets[sb[lo]])
                ok = j >= cfg.threshold
                kept_a.append(a[lo:hi][ok])
                kept_b.append(b[lo:hi][ok])
                kept_j.append(j[ok])
    cache.clear()
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.empty(0, dtype)
    save_arrays(
        _work(st),
        name,
        a=cat(kept_a, np.int64),
        b=cat(kept_b, np.int64),
        j=cat(kept_j, np.float64),
        candidates=np.array([candidates], dtype=np.int64),
    )


def clusters_components(
    root: str, cfg: MinHashConfig, docs: str, signatures: str, buckets: str, num_groups: int
) -> None:
    """Join the verified pairs into components and write, per input shard, the documents to drop."""
    st = clusters_stage(root, cfg, buckets, docs)
    n = read_manifest(docs).num_shards
    if all(st.shard_done(i) for i in range(n)):
        return
    edges = [load_arrays(_work(st), f"edges-{g:05d}") for g in range(num_groups)]
    a, b, j = (np.concatenate([np.asarray(e[k]) for e in edges]) for k in ("a", "b", "j"))
    candidates = int(sum(int(e["candidates"][0]) for e in edges))
    dropped, kept, best = clusters(a, b, j)
    offsets = row_offsets(read_manifest(docs))
    ids = _ids_of(signatures, offsets, np.unique(np.concatenate([dropped, kept])))
    ds, ks = _shard_of(offsets, dropped), _shard_of(offsets, kept)
    for shard in range(n):
        if st.shard_done(shard):
            continue
        sel = np.flatnonzero(ds == shard)
        table = pa.table(
            [
                ds[sel],
                dropped[sel] - offsets[ds[sel]],
                pa.array([ids[x] for x in dropped[sel].tolist()], pa.string()),
                ks[sel],
                kept[sel] - offsets[ks[sel]],
                pa.array([ids[x] for x in kept[sel].tolist()], pa.string()),
                pa.array([round(x, 4) for x in best[sel].tolist()], pa.float64()),
            ],
            schema=DROP_SCHEMA,
        )
        with st.open_shard(shard, schema=DROP_SCHEMA) as w:
            w.count_in(table.num_rows)
            w.write_table(table)
            if shard == 0:
                w.add_count("candidate_pairs", candidates)
                w.add_count("verified_pairs", len(a))


def _ids_of(signatures: str, offsets: np.ndarray, docs: np.ndarray) -> dict[int, str]:
    """Document number → id, for ``docs`` (ascending), read from the signatures stage."""
    out = {}
    shards = _shard_of(offsets, docs)
    for shard in np.unique(shards).tolist():
        mine = docs[shards == shard]
        table, _ = input_shard(signatures, shard, ["id"])
        out.update(zip(mine.tolist(), table.column("id").take(pa.array(mine - offsets[shard])).to_pylist()))
    return out


def minhash_filter_shard(root: str, cfg: MinHashConfig, docs: str, clusters_manifest: str, index: int) -> None:
    """Shard ``index`` without the documents ``minhash_clusters`` drops (``near_duplicate``)."""
    st = minhash_stage(root, cfg, docs, clusters_manifest)
    if st.shard_done(index):
        return
    cm = read_manifest(clusters_manifest)
    i = next(i for i, s in enumerate(cm.shards) if s.index == index)
    drops = cm.read_shard(i, ["row"]).column("row").to_numpy()
    table, path = input_shard(docs, index)
    dropped = np.zeros(table.num_rows, dtype=bool)
    dropped[drops] = True
    kept = table.filter(pa.array(~dropped))
    with st.open_shard(index, schema=table.schema, source=path) as w:
        w.count_in(table.num_rows)
        w.reject_table(table.filter(pa.array(dropped)), "near_duplicate")
        w.write_table(kept)
        if kept.num_rows:
            w.add_count("text_bytes_kept", text_bytes(kept))
