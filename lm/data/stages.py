"""The data stages as plain Python: extract, and the one-pass ``filters`` stage.

Each stage is defined here once (its ``Stage``, per-shard function and commit); the Prefect
tasks in ``tasks/`` only wrap them (retries, progress artifacts), and the drivers below run
them without Prefect, shard after shard::

    from lm.data.stages import run_extract, run_filters
    extract = run_extract("outputs", ["crawl/*.warc.gz"])
    corpus = run_filters("outputs", extract, {"langid": {"languages": ["en", "de"]}})

``extract`` reads WARC/WET/ARC files or URLs (one shard per file, or per ``slice_bytes`` of a
big per-record gzip file) and writes ``<root>/extract/<fingerprint>/`` (see
``lm.data.ingest`` for what each record becomes). Its plan reads each file once: sources that
name the same file twice (``[dir, dir/part-000.warc.gz]``, a file listed twice) are merged
here, and the manifest says so (``notes``). Record ids hash the source location and offset,
so they are unique within the stage even when archives share WARC-Record-IDs.

The filter stage is ``lm.data.filters.stage``. :func:`check_output` is the guard both use:
an empty output fails unless ``allow_empty``; a filter that rejects more than 99% of what it
sees gives a loud warning.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from lm.data.filters.stage import commit_filters, filter_counts, filter_shard, filter_stage, needs_run, plan_filters
from lm.data.ingest import DOC_SCHEMA, ExtractConfig, extract_documents, max_block_bytes, plan_shards, shard_label
from lm.data.remote import CC_BASE_URL, INDEX_PREFIX, HttpOptions, RemoteError, expand_sources, is_url
from lm.data.shards import DiskFullError, Manifest, Stage, read_manifest, source_fingerprint
from lm.data.warc import iter_file

EXTRACT = "extract"
EXTRACT_VERSION = "2"  # 2: record ids hash the source location and offset (unique within the stage)
REJECT_ALL_FRACTION = 0.99  # a filter rejecting more than this share of its input gets a warning


# --------------------------------------------------------------------------- extract: plan


def _identity(location: str) -> tuple[str, str]:
    """(location to read, key that is equal for the same file): local paths made absolute,
    compared by real path (symlinks, ``a/../a``); URLs as given."""
    prefix = INDEX_PREFIX if location.startswith(INDEX_PREFIX) else ""
    target = location[len(prefix) :]
    if is_url(target):
        return location, location
    return prefix + os.path.abspath(target), prefix + os.path.realpath(target)


def unique_locations(locations: list[str]) -> tuple[list[str], list[str]]:
    """Each file once, in first-seen order; returns (locations, notes on what was merged)."""
    seen: dict[str, str] = {}
    out, notes = [], []
    for loc in locations:
        path, key = _identity(loc)
        if key in seen:
            notes.append(
                f"source {loc!r} is the same file as {seen[key]!r} (listed twice, or inside a directory/glob "
                "also listed): read once"
            )
            continue
        seen[key] = loc
        out.append(path)
    return out, notes


def plan_digest(shards: list[dict]) -> str:
    """Identity of a shard plan: each shard's location and byte range, and each input's
    identity (local files by size and mtime). Tasks get this short digest, not the plan."""
    plan = [
        [
            s["location"],
            s["start"],
            s["end"],
            s.get("base_url"),
            source_fingerprint(s["location"].removeprefix(INDEX_PREFIX)),
        ]
        for s in shards
    ]
    return hashlib.sha256(json.dumps(plan, separators=(",", ":")).encode()).hexdigest()


def plan_extract(locations: list[str], cfg: ExtractConfig, base_url: str = CC_BASE_URL) -> dict:
    """The extract plan for concrete locations: ``shards``, their ``digest``, planning ``notes``."""
    unique, notes = unique_locations(locations)
    shards = plan_shards(unique, cfg.slice_bytes, base_url)
    return {"shards": shards, "digest": plan_digest(shards), "notes": notes}


def extract_stage(root, cfg: ExtractConfig, digest: str) -> Stage:
    """The stage directory for a plan digest and settings (same arguments → same fingerprint)."""
    return Stage(root, EXTRACT, version=EXTRACT_VERSION, config={**cfg.model_dump(), "plan": digest})


def check_root_outside_sources(root: str, sources: list[str]) -> None:
    """Refuse an artifact root inside a source directory (or under a recursive glob): each
    run would read the previous run's outputs as input and never find itself complete."""
    if "://" in str(root):
        return
    here = Path(os.path.realpath(os.path.expanduser(str(root))))
    for spec in sources:
        if is_url(spec) or spec.startswith(("cc://", INDEX_PREFIX)):
            continue
        s = os.path.expanduser(spec)
        if any(c in s for c in "*?["):
            if "**" not in s:
                continue  # a one-level glob does not descend into the root's stage folders
            s = s[: min(s.index(c) for c in "*?[" if c in s)]
        elif not os.path.isdir(s):
            continue
        base = Path(os.path.realpath(s or "."))
        if here == base or here.is_relative_to(base):
            raise ValueError(
                f"root {root!r} is inside source {spec!r} ({base}): every run would read its own outputs "
                "as input; put the root outside the source directories (or list the archives by glob)"
            )


# --------------------------------------------------------------------------- extract: shards


def extract_shard(
    root,
    cfg: ExtractConfig,
    digest: str,
    index: int,
    shard: dict,
    http: HttpOptions | None = None,
    *,
    on_progress: Callable[[int], None] | None = None,
    on_open: Callable[[], None] | None = None,
    give_up: bool = True,
    log=None,
) -> str:
    """Extract ``shard`` (number ``index`` of the plan with ``digest``); skip it if its marker
    exists. Returns the marker path. A source that cannot be read is counted failed
    (``source_error``) when ``give_up``; otherwise the error propagates (a caller that retries)."""
    stage = extract_stage(root, cfg, digest)
    if stage.shard_done(index):
        return str(stage.marker_path(index))
    with stage.open_shard(index, schema=DOC_SCHEMA, source=shard_label(shard)) as w:
        if on_open is not None:
            on_open()
        records = iter_file(
            shard["location"],
            start=shard["start"],
            end=shard["end"],
            http=http,
            max_block_bytes=max_block_bytes(cfg),
            base_url=shard.get("base_url") or CC_BASE_URL,
            on_progress=on_progress,
        )
        try:
            for out in extract_documents(records, cfg):
                w.count_in()
                if out.status == "kept":
                    w.write(out.row)
                elif out.status == "rejected":
                    w.reject(out.row, out.why)
                else:
                    w.fail(out.why, out.row["source"])
        except DiskFullError:
            raise  # our output did not fit: not the source's fault, never counted as a failed source
        except FileNotFoundError as e:  # a remote 404: nothing to retry, count the file as lost
            if log:
                log.error("%s", e)
            w.count_in()
            w.fail("source_not_found", shard["location"])
        except (RemoteError, OSError) as e:
            if not give_up:
                raise
            if log:
                log.error("giving up on %s: %s", shard["location"], e)
            w.count_in()
            w.fail("source_error", shard["location"])
    return str(stage.marker_path(index))


def commit_extract(root, cfg: ExtractConfig, shards: list[dict], notes: list[str] | None = None) -> str:
    """Write the stage manifest from the shard markers (refuses if a shard is missing)."""
    stage = extract_stage(root, cfg, plan_digest(shards))
    sources = sorted({s["location"] for s in shards})
    return str(stage.commit(num_shards=len(shards), extra={"sources": sources, "notes": list(notes or [])}))


# --------------------------------------------------------------------------- output checks


class EmptyStageError(RuntimeError):
    """A stage kept no document (and ``allow_empty`` was not set)."""


def stage_warnings(manifest: Manifest | str | os.PathLike) -> list[str]:
    """Loud warnings for a finished stage: a filter (or a stage after extract) that rejected
    more than 99% of the documents it saw."""
    m = read_manifest(manifest)
    parts = (
        [(f"filter {f['filter']}", f["in"], f["kept"], f["rejected"]) for f in filter_counts(m)]
        if m.stage == "filters"
        else []
        if m.stage == EXTRACT
        else [(f"stage {m.stage}", m.counts.num_in, m.counts.kept, m.counts.rejected)]
    )
    out = []
    for what, n_in, n_kept, rejected in parts:
        if n_in and (n_in - n_kept) / n_in > REJECT_ALL_FRACTION:
            top = ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1])[:3])
            out.append(
                f"{what} rejected {n_in - n_kept} of {n_in} documents ({100 * (n_in - n_kept) / n_in:.1f}%; {top}): "
                "check its settings"
            )
    return out


def check_output(manifest: Manifest | str | os.PathLike, allow_empty: bool = False) -> list[str]:
    """Warnings for a finished stage (see :func:`stage_warnings`); raises EmptyStageError when
    it kept nothing, unless ``allow_empty``."""
    m = read_manifest(manifest)
    warnings = stage_warnings(m)
    if not m.counts.kept and not allow_empty:
        why = "; ".join(warnings) or f"counts {m.counts}"
        raise EmptyStageError(
            f"stage {m.stage} kept no document ({why}); its output is at {m.path}. "
            "Check the settings (e.g. langid.languages takes codes such as en), "
            "or set allow_empty: true to continue with an empty output"
        )
    return warnings


# --------------------------------------------------------------------------- drivers


def run_extract(
    root,
    sources: list[str],
    cfg: ExtractConfig | None = None,
    http: HttpOptions | None = None,
    *,
    allow_empty: bool = False,
) -> str:
    """Extract ``sources`` (paths, globs, directories, URLs) shard after shard; returns the manifest path."""
    cfg = cfg or ExtractConfig()
    check_root_outside_sources(str(root), sources)
    plan = plan_extract(expand_sources(sources, http), cfg)
    stage = extract_stage(root, cfg, plan["digest"])
    if not stage.is_complete():
        for i, shard in enumerate(plan["shards"]):
            extract_shard(root, cfg, plan["digest"], i, shard, http)
        commit_extract(root, cfg, plan["shards"], plan["notes"])
    check_output(stage.manifest_path, allow_empty)
    return str(stage.manifest_path)


def run_filters(root, input_manifest, settings=None, *, allow_empty: bool = False) -> str:
    """The filter stage over every shard of ``input_manifest``; returns the manifest path.
    ``settings``: a dict or model of per-filter sections (see ``lm.data.filters``)."""
    plan = plan_filters(settings)
    n = read_manifest(input_manifest).num_shards
    if needs_run(root, plan, input_manifest):
        for i in range(n):
            filter_shard(root, plan, input_manifest, i)
        commit_filters(root, plan, input_manifest, n)
    path = filter_stage(root, plan, input_manifest).manifest_path
    check_output(path, allow_empty)
    return str(path)
