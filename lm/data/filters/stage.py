"""The ``filters`` stage: every registered filter in one pass over each shard.

Reads: the input stage's Parquet shards (``id``, ``url``, ``source``, ``text``, …; usually
``extract``). Writes ``<root>/filters/<fingerprint>/``:

- ``part-NNNNN.parquet``: documents every enabled filter kept, with the columns the filters
  add (``language``, ``language_score``, ``quality_score``, ``nsfw_score``, ``toxic_score``);
- ``rejects-NNNNN.parquet``: the others, with ``reason = "<filter>:<rule>"`` and the scores
  computed up to the filter that rejected them;
- ``_manifest.json``: counts of the whole stage plus per filter, as flat keys
  ``<filter>.in``, ``<filter>.kept``, ``<filter>.text_bytes_kept`` and the filter's own
  counts (``pii.emails_masked``); rejects and failures are keyed ``<filter>:<rule>`` /
  ``<filter>:<ErrorType>``. :func:`filter_counts` reads them back per filter.

The fingerprint hashes, per enabled filter in chain order: name, code version, settings
(not ``enabled``) and the content hash of every model file it declares. Changing one
filter's setting recomputes this stage only (scores are reused from ``lm.data.filters.scores``).

``materialize_each`` also writes, in the same pass, one stage per filter
(``<root>/<filter>/<fingerprint>/``: the documents after that filter, its rejects), whose
fingerprint covers the filters up to it.

A plan (:func:`plan_filters`) is a JSON-able dict the flow computes once (models fetched or
trained, settings checked) and hands to every shard task.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import pyarrow as pa
from pydantic import BaseModel

from lm.data import filters as registry
from lm.data.filters.base import Filter, ScoringFilter, content_hash
from lm.data.filters.scores import ScoreCache
from lm.data.shards import Manifest, Stage, read_manifest, read_shard_schema

STAGE = "filters"
VERSION = "1"  # bump when the stage loop changes what it writes (a filter bumps its own `version`)
BATCH_ROWS = 1024  # rows turned into Python dicts at a time


def _config(settings) -> object:
    """The filter settings as the registry's model (from a dict, that model, or a model that
    extends it, such as the flows' funnel config)."""
    model = registry.filters_config_model()
    if isinstance(settings, BaseModel):
        settings = settings.model_dump(mode="json", include=set(model.model_fields))
    return model.model_validate(settings or {})


def plan_filters(settings=None) -> dict:
    """Check the settings, prepare every enabled filter (fetch/train default models) and
    return the plan the shard tasks take: settings + each filter's fingerprinted identity."""
    cfg = _config(settings)
    filters = cfg.enabled_filters()
    for f in filters:
        f.check()
        f.prepare()
    identity = [
        {
            "name": f.name,
            "version": f.version,
            "settings": f.config.settings(),
            "files": {role: content_hash(path) for role, path in sorted(f.model_files().items())},
        }
        for f in filters
    ]
    return {"settings": cfg.model_dump(mode="json"), "identity": identity, "materialize_each": cfg.materialize_each}


def filter_stage(root, plan: Mapping, input_manifest) -> Stage:
    return Stage(root, STAGE, version=VERSION, config={"filters": plan["identity"]}, inputs=[input_manifest])


def materialized_stages(root, plan: Mapping, input_manifest) -> list[Stage]:
    """With ``materialize_each``: one stage per filter (its fingerprint: the filters up to it)."""
    if not plan["materialize_each"]:
        return []
    ident = plan["identity"]
    return [
        Stage(root, f["name"], version=VERSION, config={"filters": ident[: i + 1]}, inputs=[input_manifest])
        for i, f in enumerate(ident)
    ]


def needs_run(root, plan: Mapping, input_manifest) -> bool:
    return any(
        not st.is_complete()
        for st in [filter_stage(root, plan, input_manifest), *materialized_stages(root, plan, input_manifest)]
    )


def _filters(plan: Mapping) -> list[Filter]:
    """The plan's filters, built here (a worker process), checked against what was fingerprinted."""
    filters = _config(plan["settings"]).enabled_filters()
    if [f.name for f in filters] != [i["name"] for i in plan["identity"]]:
        raise RuntimeError(
            f"filters here {[f.name for f in filters]} differ from the plan's {[i['name'] for i in plan['identity']]}: "
            "register the same filters in every worker process"
        )
    for f, ident in zip(filters, plan["identity"]):
        for role, path in f.model_files().items():
            try:
                here = content_hash(path)
            except FileNotFoundError:
                here = "missing"
            if here != ident["files"].get(role):
                raise FileNotFoundError(
                    f"the {f.name} {role} here ({path}: {here}) is not the one the flow fingerprinted "
                    f"({ident['files'].get(role)}); put $LMPIPE_CACHE on a shared "
                    "filesystem, or give every worker the same file by absolute path"
                )
    return filters


def output_schema(input_schema: pa.Schema, filters: list[Filter]) -> pa.Schema:
    schema = input_schema
    for f in filters:
        for name, type_name in f.columns.items():
            if schema.get_field_index(name) < 0:
                schema = schema.append(pa.field(name, pa.type_for_alias(type_name)))
    return schema


def _nbytes(text) -> int:
    return len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0


def filter_shard(root, plan: Mapping, input_manifest, index: int) -> int:
    """Run the chain over shard ``index`` of ``input_manifest``; returns documents kept (-1:
    already done). A failing record is counted (``<filter>:<ErrorType>``), never fatal."""
    main = filter_stage(root, plan, input_manifest)
    stages = [main, *materialized_stages(root, plan, input_manifest)]
    todo = [not st.shard_done(index) for st in stages]
    if not any(todo):
        return -1
    m = read_manifest(input_manifest)
    info, path = m.shards[index], m.shard_path(index)
    table = m.read_shard(index)
    filters = _filters(plan)
    caches = {
        f.name: ScoreCache(root, f, ident["files"], info.sha256 or info.name)
        for f, ident in zip(filters, plan["identity"])
        if isinstance(f, ScoringFilter)
    }
    schema = output_schema(read_shard_schema(path), filters)
    kept = 0
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(st.open_shard(index, schema=schema, source=str(path))) if do else None
            for st, do in zip(stages, todo)
        ]
        chain = _Chain(filters, caches, writers[0], writers[1:] or [None] * len(filters))
        for batch in table.to_batches(max_chunksize=BATCH_ROWS):
            for row in batch.to_pylist():
                kept += chain.run(row)
        for cache in caches.values():
            cache.save()
    return kept


class _Chain:
    """One document through the filters; counts per filter on the main writer."""

    def __init__(self, filters: list[Filter], caches: dict[str, ScoreCache], main, mats: list):
        self.filters, self.caches, self.main, self.mats = filters, caches, main, mats

    def _count(self, key: str, n: int = 1) -> None:
        if self.main is not None:
            self.main.add_count(key, n)

    def run(self, doc: dict) -> int:
        main = self.main
        if main is not None:
            main.count_in()
            self._count("text_bytes_in", _nbytes(doc.get("text")))
        text, nbytes = None, 0
        for f, mat in zip(self.filters, self.mats):
            self._count(f"{f.name}.in")
            if mat is not None:
                mat.count_in()
            try:
                keep, rule, counts = self._apply(f, doc)
            except Exception as e:  # a bad record never kills the shard
                kind = f"{f.name}:{type(e).__name__}"
                for w in (main, mat):
                    if w is not None:
                        w.fail(kind, doc.get("id"))
                return 0
            if not keep:
                for w in (main, mat):
                    if w is not None:
                        w.reject(doc, f"{f.name}:{rule}")
                return 0
            if doc["text"] is not text:  # bytes only re-counted when a filter rewrote the text
                text, nbytes = doc["text"], _nbytes(doc["text"])
            self._count(f"{f.name}.kept")
            self._count(f"{f.name}.text_bytes_kept", nbytes)
            for k, v in counts.items():
                self._count(f"{f.name}.{k}", v)
            if mat is not None:
                mat.add_count("text_bytes_kept", nbytes)
                for k, v in counts.items():
                    mat.add_count(k, v)
                mat.write(dict(doc))
        if main is not None:
            main.write(doc)
            self._count("text_bytes_kept", _nbytes(doc["text"]) if text is None else nbytes)
        return 1

    def _apply(self, f: Filter, doc: dict) -> tuple[bool, str | None, dict[str, int]]:
        if not isinstance(doc.get("text"), str):
            return False, "no_text", {}
        if f.is_transform():
            return True, None, f.transform(doc)
        if isinstance(f, ScoringFilter):
            doc.update(self.caches[f.name].scores(doc["text"]))
            keep, rule = f.decide(doc)
        else:
            keep, rule = f.keep(doc)
        return keep, rule, {}


def commit_filters(root, plan: Mapping, input_manifest, num_shards: int) -> str:
    """Write the manifests (materialized stages first, the ``filters`` stage last)."""
    mats = materialized_stages(root, plan, input_manifest)
    for st in mats:
        if not st.is_complete():
            st.commit(num_shards=num_shards)
    main = filter_stage(root, plan, input_manifest)
    if not main.is_complete():
        main.commit(
            num_shards=num_shards,
            extra={
                "filters": [i["name"] for i in plan["identity"]],
                "materialized": {st.name: str(st.manifest_path) for st in mats},
            },
        )
    return str(main.manifest_path)


def filter_counts(manifest: Manifest | str | os.PathLike) -> list[dict]:
    """Per filter of a ``filters`` manifest, in chain order: in, kept, rejected (by rule),
    failed (by error type), text_bytes_kept and the filter's own counts."""
    m = read_manifest(manifest)
    c = m.counts
    out = []
    for name in m.extra.get("filters", []):
        own = {k[len(name) + 1 :]: v for k, v in c.extra.items() if k.startswith(f"{name}.")}
        out.append(
            {
                "filter": name,
                "in": own.pop("in", 0),
                "kept": own.pop("kept", 0),
                "rejected": {k[len(name) + 1 :]: v for k, v in c.rejected.items() if k.startswith(f"{name}:")},
                "failed": {k[len(name) + 1 :]: v for k, v in c.failed.items() if k.startswith(f"{name}:")},
                "text_bytes_kept": own.pop("text_bytes_kept", 0),
                "counts": own,
            }
        )
    return out
