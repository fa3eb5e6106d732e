"""Dedup stages over Parquet shards: exact line dedup and MinHash near-duplicate removal.

Exact line dedup, three stages:
  ``line_counts``     (one task per shard)  distinct line hashes of the shard + counts
  ``line_duplicates`` (one task)            hashes seen more than once in the corpus
  ``exact_dedup``     (one task per shard)  documents without those lines; documents left
                                            empty are rejected (``empty_after_line_dedup``)
MinHash, four stages (each its own directory, so a big corpus splits across workers):
  ``minhash_signatures`` (per shard)        band keys of every document
  ``minhash_buckets``    (per band group)   candidate pairs sharing a band key
  ``minhash_clusters``   (one task)         pairs verified by true Jaccard, union-find; the
                                            documents to drop, with the one they duplicate
  ``minhash``            (per shard)        documents minus the dropped (``near_duplicate``)
Documents are addressed as (shard, row) of the stage input to MinHash.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
from prefect import task

from lm.data.dedup.exact import drop_lines, duplicate_hashes, line_hash_counts
from lm.data.dedup.minhash import band_keys, candidate_pairs, duplicates_to_drop, shingles, signature
from lm.data.shards import Stage, iter_stage_tables, manifest_dir, read_manifest, read_shard, read_stage_table

VERSION = "1"


def _input_shard(manifest_path: str, index: int, columns=None) -> tuple[pa.Table, str]:
    m = read_manifest(manifest_path)
    info = m["shards"][index]
    path = manifest_dir(m) / info["name"]
    return read_shard(path, info.get("sha256"), columns), str(path)


def num_shards(manifest_path: str) -> int:
    return len(read_manifest(manifest_path)["shards"])


# --------------------------------------------------------------------------- exact line dedup


def line_counts_stage(root: str, docs: str) -> Stage:
    return Stage(root, "line_counts", version=VERSION, config={}, inputs=[docs])


def line_duplicates_stage(root: str, counts: str) -> Stage:
    return Stage(root, "line_duplicates", version=VERSION, config={}, inputs=[counts])


def exact_dedup_stage(root: str, config: dict, docs: str, duplicates: str) -> Stage:
    return Stage(root, "exact_dedup", version=VERSION, config=config, inputs=[docs, duplicates])


_COUNTS_SCHEMA = pa.schema([("hash", pa.uint64()), ("count", pa.int64())])


@task(name="line-counts-shard", retries=2, task_run_name="line-counts-{index}")
def line_counts_shard(root: str, docs: str, index: int) -> None:
    st = line_counts_stage(root, docs)
    if st.shard_done(index):
        return
    table, path = _input_shard(docs, index, ["text"])
    hashes, counts = line_hash_counts(t for t in table.column("text").to_pylist() if isinstance(t, str))
    with st.open_shard(index, schema=_COUNTS_SCHEMA, source=path) as w:
        w.count_in(len(hashes))
        for h, c in zip(hashes.tolist(), counts.tolist()):
            w.write({"hash": h, "count": c})


# Reductions read a whole stage: retried like the per-shard tasks (a transient read error,
# e.g. on a network file system, should not fail the run); they redo only what is missing.
@task(name="line-duplicates", retries=2)
def line_duplicates(root: str, counts: str) -> str:
    st = line_duplicates_stage(root, counts)
    if st.is_complete():
        return str(st.manifest_path)
    parts = ((t.column("hash").to_numpy(), t.column("count").to_numpy()) for t in iter_stage_tables(counts))
    dups = duplicate_hashes(parts)
    with st.open_shard(0, schema=pa.schema([("hash", pa.uint64())])) as w:
        w.count_in(len(dups))
        for h in dups.tolist():
            w.write({"hash": h})
    return str(st.commit(num_shards=1))


@task(name="exact-dedup-shard", retries=2, task_run_name="exact-dedup-{index}")
def exact_dedup_shard(root: str, config: dict, docs: str, duplicates: str, index: int) -> None:
    st = exact_dedup_stage(root, config, docs, duplicates)
    if st.shard_done(index):
        return
    dups = np.sort(read_stage_table(duplicates, columns=["hash"]).column("hash").to_numpy())
    table, path = _input_shard(docs, index)
    with st.open_shard(index, schema=table.schema, source=path) as w:
        for row in table.to_pylist():
            w.count_in()
            text = row.get("text")
            if not isinstance(text, str):
                w.reject(row, "no_text")
                continue
            row["text"], dropped = drop_lines(text, dups)
            w.add_count("lines_dropped", dropped)
            if config.get("drop_empty", True) and not row["text"].strip():
                w.reject(row, "empty_after_line_dedup")
            else:
                w.add_count("text_bytes_kept", len(row["text"].encode("utf-8", "surrogatepass")))
                w.write(row)


# --------------------------------------------------------------------------- MinHash


def signature_config(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("num_hashes", "num_bands", "ngrams", "seed")}


def signatures_stage(root: str, cfg: dict, docs: str) -> Stage:
    return Stage(root, "minhash_signatures", version=VERSION, config=signature_config(cfg), inputs=[docs])


def buckets_stage(root: str, cfg: dict, signatures: str) -> Stage:
    config = {**signature_config(cfg), "num_bucket_tasks": cfg["num_bucket_tasks"]}
    return Stage(root, "minhash_buckets", version=VERSION, config=config, inputs=[signatures])


def clusters_stage(root: str, cfg: dict, buckets: str, docs: str) -> Stage:
    config = {"ngrams": cfg["ngrams"], "threshold": cfg["threshold"]}
    return Stage(root, "minhash_clusters", version=VERSION, config=config, inputs=[buckets, docs])


def minhash_stage(root: str, cfg: dict, docs: str, clusters: str) -> Stage:
    return Stage(root, "minhash", version=VERSION, config=cfg, inputs=[docs, clusters])


_SIG_SCHEMA = pa.schema([("row", pa.int64()), ("id", pa.string()), ("bands", pa.list_(pa.uint64()))])
_PAIR_SCHEMA = pa.schema([(k, pa.int64()) for k in ("a_shard", "a_row", "b_shard", "b_row")])
_DROP_SCHEMA = pa.schema(
    [("shard", pa.int64()), ("row", pa.int64()), ("id", pa.string()), ("duplicate_of_shard", pa.int64()),
     ("duplicate_of_row", pa.int64()), ("duplicate_of_id", pa.string()), ("jaccard", pa.float64())]
)


@task(name="minhash-signatures-shard", retries=2, task_run_name="minhash-signatures-{index}")
def signatures_shard(root: str, cfg: dict, docs: str, index: int) -> None:
    st = signatures_stage(root, cfg, docs)
    if st.shard_done(index):
        return
    table, path = _input_shard(docs, index, ["id", "text"])
    with st.open_shard(index, schema=_SIG_SCHEMA, source=path) as w:
        for row, (doc_id, text) in enumerate(zip(table.column("id").to_pylist(), table.column("text").to_pylist())):
            w.count_in()
            s = shingles(text, cfg["ngrams"]) if isinstance(text, str) else set()
            # An empty document has no shingles: it is nobody's near-duplicate (no band keys).
            keys = band_keys(signature(s, cfg["num_hashes"], cfg["seed"]), cfg["num_bands"]) if s else []
            w.write({"row": row, "id": doc_id, "bands": keys})


@task(name="minhash-buckets", retries=2, task_run_name="minhash-buckets-{group}")
def buckets_group(root: str, cfg: dict, signatures: str, group: int) -> None:
    """Candidate pairs for the bands ``group::num_bucket_tasks`` across every shard."""
    st = buckets_stage(root, cfg, signatures)
    if st.shard_done(group):
        return
    bands = list(range(group, cfg["num_bands"], cfg["num_bucket_tasks"]))
    per_band: dict[int, list] = defaultdict(list)
    m = read_manifest(signatures)
    for shard, table in enumerate(iter_stage_tables(m, columns=["row", "bands"])):
        for row, keys in zip(table.column("row").to_pylist(), table.column("bands").to_pylist()):
            if keys:
                for b in bands:
                    per_band[b].append((keys[b], (shard, row)))
    pairs = candidate_pairs(per_band[b] for b in bands)
    with st.open_shard(group, schema=_PAIR_SCHEMA) as w:
        for (a_shard, a_row), (b_shard, b_row) in sorted(pairs):
            w.count_in()
            w.write({"a_shard": a_shard, "a_row": a_row, "b_shard": b_shard, "b_row": b_row})


@task(name="minhash-clusters", retries=2)
def clusters(root: str, cfg: dict, buckets: str, docs: str) -> str:
    st = clusters_stage(root, cfg, buckets, docs)
    if st.is_complete():
        return str(st.manifest_path)
    pairs_table = read_stage_table(buckets)
    pairs = set()
    if pairs_table.num_rows:
        cols = [pairs_table.column(k).to_pylist() for k in ("a_shard", "a_row", "b_shard", "b_row")]
        pairs = {((a, b), (c, d)) for a, b, c, d in zip(*cols)}
    # Only documents in some pair are read back and shingled for the true Jaccard check.
    wanted: dict[int, set] = defaultdict(set)
    for a, b in pairs:
        wanted[a[0]].add(a[1])
        wanted[b[0]].add(b[1])
    sets, ids = {}, {}
    for shard, rows in wanted.items():
        table, _ = _input_shard(docs, shard, ["id", "text"])
        for r in rows:
            ids[(shard, r)] = table.column("id")[r].as_py()
            sets[(shard, r)] = shingles(table.column("text")[r].as_py() or "", cfg["ngrams"])
    drop = duplicates_to_drop(pairs, sets.__getitem__, cfg["threshold"])
    with st.open_shard(0, schema=_DROP_SCHEMA) as w:
        w.add_count("candidate_pairs", len(pairs))
        for (shard, row), ((ks, kr), j) in sorted(drop.items()):
            w.count_in()
            w.write({"shard": shard, "row": row, "id": ids[(shard, row)], "duplicate_of_shard": ks,
                     "duplicate_of_row": kr, "duplicate_of_id": ids[(ks, kr)], "jaccard": j})
    return str(st.commit(num_shards=1))


@task(name="minhash-filter-shard", retries=2, task_run_name="minhash-filter-{index}")
def minhash_filter_shard(root: str, cfg: dict, docs: str, clusters_manifest: str, index: int) -> None:
    st = minhash_stage(root, cfg, docs, clusters_manifest)
    if st.shard_done(index):
        return
    drops = read_stage_table(clusters_manifest)
    dropped = set()
    if drops.num_rows:
        dropped = {r for s, r in zip(drops.column("shard").to_pylist(), drops.column("row").to_pylist()) if s == index}
    table, path = _input_shard(docs, index)
    with st.open_shard(index, schema=table.schema, source=path) as w:
        for row_index, row in enumerate(table.to_pylist()):
            w.count_in()
            if row_index in dropped:
                w.reject(row, "near_duplicate")
            else:
                w.add_count("text_bytes_kept", len((row.get("text") or "").encode("utf-8", "surrogatepass")))
                w.write(row)

