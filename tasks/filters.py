"""Filter stages (langid, pii, rules, quality, harmful), one Prefect task per shard.

Reads: the upstream stage's Parquet shards (``id``, ``url``, ``source``, ``text``, ...).
Writes: ``<root>/<stage>/<fingerprint>/part-NNNNN.parquet`` (kept documents, plus the
columns the stage adds, e.g. ``language``), ``rejects-NNNNN.parquet`` (with ``reason``) and
``_manifest.json`` with counts (kept, rejected by reason, failed by error kind, PII masked,
text bytes in and kept).
"""

from __future__ import annotations

import pyarrow as pa
from prefect import task

from lm.data.filters import ADDED_COLUMNS, apply_filters, build_stage_filters
from lm.data.langid import lid_model_path
from lm.data.quality import default_model_path
from lm.data.shards import Stage, manifest_dir, read_manifest, read_shard, read_shard_schema, source_fingerprint

VERSION = "1"  # bump when a filter's behaviour changes: it changes every fingerprint downstream


def filter_stage(root: str, stage: str, config: dict, input_manifest: str) -> Stage:
    # Declared inputs (lm.data.fingerprint): the language-ID model is identified by its content,
    # so another $LMPIPE_LID_MODEL file gives another langid directory.
    files = {"lid_model": lid_model_path()} if stage == "langid" else None
    return Stage(root, stage, version=VERSION, config=config, inputs=[input_manifest], files=files)


def output_schema(input_schema: pa.Schema, stage: str) -> pa.Schema:
    schema = input_schema
    for name, type_name in ADDED_COLUMNS.get(stage, []):
        if schema.get_field_index(name) < 0:
            schema = schema.append(pa.field(name, pa.type_for_alias(type_name)))
    return schema


# Stage config key holding a classifier's identity → (model kind, key of its user-given path).
_MODEL_KEYS = {"model": ("quality", "model_path"), "nsfw_model": ("nsfw", "nsfw_model_path"), "toxic_model": ("toxic", "toxic_model_path")}


def check_models(config: dict) -> None:
    """Fail unless this process would load the classifier files the flow fingerprinted.

    A worker on another machine (Dask, Ray) resolves model paths itself: a relative path,
    or a default model under its own ``$LMPIPE_CACHE``, may be another file (a default model
    trained there would score differently), which would make the outputs differ silently.
    """
    for key, (kind, path_key) in _MODEL_KEYS.items():
        if key not in config:
            continue
        path = config.get(path_key) or str(default_model_path(kind))
        if source_fingerprint(path) != config[key]:
            raise FileNotFoundError(
                f"the {kind} classifier here ({source_fingerprint(path)}) is not the one the flow used ({config[key]}); "
                f"put $LMPIPE_CACHE on the shared filesystem, or set the stage's {path_key} to an absolute path every worker reads"
            )


@task(name="filter-shard", retries=2, retry_delay_seconds=2, task_run_name="{stage}-shard-{index}")
def filter_shard(root: str, stage: str, config: dict, input_manifest: str, index: int) -> int:
    """Filter shard ``index`` of ``input_manifest`` into the stage directory; returns rows kept."""
    st = filter_stage(root, stage, config, input_manifest)
    if st.shard_done(index):
        return -1
    m = read_manifest(input_manifest)
    info = m["shards"][index]
    path = manifest_dir(m) / info["name"]
    table = read_shard(path, info.get("sha256"))
    check_models(config)
    filters = build_stage_filters(stage, config)
    schema = output_schema(read_shard_schema(path), stage)
    kept = 0
    with st.open_shard(index, schema=schema, source=str(path)) as w:
        for row in table.to_pylist():
            w.count_in()
            w.add_count("text_bytes_in", len((row.get("text") or "").encode("utf-8", "surrogatepass")))
            try:
                keep, reason, counts = apply_filters(filters, row)
            except Exception as e:  # a bad record never kills the shard
                w.fail(type(e).__name__, row.get("id"))
                continue
            for k, v in counts.items():
                w.add_count(k, v)
            if keep:
                kept += 1
                w.add_count("text_bytes_kept", len(row["text"].encode("utf-8", "surrogatepass")))
                w.write(row)
            else:
                w.reject(row, reason)
    return kept


@task(name="commit-stage")
def commit_stage(root: str, stage: str, config: dict, input_manifest: str, num_shards: int) -> str:
    return str(filter_stage(root, stage, config, input_manifest).commit(num_shards=num_shards))
