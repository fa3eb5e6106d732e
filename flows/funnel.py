"""The filtering funnel: extracted text → filters (langid → PII → rules → quality → harmful,
one pass) → exact line dedup → MinHash → final corpus.

``run_funnel`` is called inside a flow (the ``data`` flow, or ``filters`` below on an
existing extract stage). Every stage is its own directory under ``root`` with its own
fingerprint (its config + its input's fingerprint), so changing one threshold recomputes
that stage and the ones after it, and nothing before. It publishes each stage's counts,
a funnel table (documents and text bytes kept after each filter and stage), sample rejects
per reason, and a funnel plot (``<root>/funnel/<final fingerprint>/funnel.png``). A filter
that rejects more than 99% of its input is flagged in the stage summary, the funnel and the
run's ``warnings`` artifact; an empty stage output fails the flow unless ``allow_empty``.

    lmpipe run filters --set extract_manifest=outputs/extract/<fp>/_manifest.json --set filters.quality.min_score=0.3
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner
from pydantic import ConfigDict, Field, field_validator

from flows.funnel_config import FunnelConfig
from flows.runners import RunnerConfig, resolve_location, task_runner
from lm.config import Config, StageRef
from lm.data.dedup.stages import ExactDedupConfig, MinHashConfig, run_exact_dedup, run_minhash
from lm.data.filters.stage import commit_filters, filter_counts, filter_stage, needs_run, plan_filters
from lm.data.manifest import Manifest
from lm.data.shards import atomic_write_json, iter_stage_tables, read_manifest
from lm.data.stages import check_output, stage_warnings
from lm.data.storage import RemotePath, as_path, check_root, commit_file, local_scratch
from tasks import dedup
from tasks.artifacts import artifact_key, image_markdown, markdown_table, publish_stage
from tasks.filters import filter_shard


def _wait(futures, stage: str) -> None:
    """Wait for a stage's shard tasks; a progress artifact shows how many have finished."""
    futures = list(futures)
    progress = create_progress_artifact(
        0.0, key=artifact_key(stage, "progress"), description=f"{stage}: shards finished"
    )
    for done, f in enumerate(as_completed(futures), 1):
        f.result()  # re-raises a shard's error after its retries
        update_progress_artifact(progress, 100.0 * done / len(futures))


def _map(runner: TaskRunner, task, label: str, over: dict[str, list], /, **fixed) -> None:
    """One ``task`` run per element of ``over`` (one shard each) on ``runner``; wait for all."""
    _wait(runner.map(task, {**{k: unmapped(v) for k, v in fixed.items()}, **over}), label)


def _filters(runner: TaskRunner, root: str, plan: dict, docs: str) -> str:
    """The one-pass filter stage (and, with ``materialize_each``, a stage per filter)."""
    if needs_run(root, plan, docs):
        n = dedup.num_shards(docs)
        _map(runner, filter_shard, "filters", {"index": list(range(n))}, root=root, plan=plan, input_manifest=docs)
        commit_filters(root, plan, docs, n)
    return str(filter_stage(root, plan, docs).manifest_path)


def _exact_dedup(runner: TaskRunner, root: str, cfg: ExactDedupConfig, docs: str) -> str:
    return run_exact_dedup(root, cfg, docs, dedup.map_calls(runner, _wait))


def _minhash(runner: TaskRunner, root: str, cfg: MinHashConfig, docs: str) -> str:
    return run_minhash(root, cfg, docs, dedup.map_calls(runner, _wait))


def run_funnel(
    extract_manifest: str,
    root: str,
    config: FunnelConfig,
    runner: TaskRunner,
    *,
    allow_empty: bool = False,
    plan: dict | None = None,
) -> dict[str, str]:
    """Run the enabled stages in order, shard tasks on ``runner`` (started); returns stage
    name → manifest path (last = final corpus). ``plan``: the filter plan when the caller
    made it already (``lm.data.filters.stage.plan_filters``, which fetches or trains models)."""
    read_manifest(extract_manifest)  # fail early on a missing or broken input
    plan = plan if plan is not None else plan_filters(config)
    stages: dict[str, str] = {}
    warnings: list[str] = []
    docs = str(extract_manifest)
    if plan["identity"]:
        docs = stages["filters"] = _filters(runner, root, plan, docs)
        materialized = read_manifest(docs).extra.get("materialized") or {}
        warnings += finish_stage(docs, allow_empty, extra_md=per_filter_md(docs, materialized))
    if config.exact_dedup.enabled:
        docs = stages["exact_dedup"] = _exact_dedup(runner, root, config.exact_dedup, docs)
        warnings += finish_stage(docs, allow_empty)
    if config.minhash.enabled:
        docs = stages["minhash"] = _minhash(runner, root, config.minhash, docs)
        warnings += finish_stage(docs, allow_empty)
    publish_funnel(extract_manifest, stages, root, warnings)
    return stages


def finish_stage(manifest: str, allow_empty: bool, *, samples: int = 3, extra_md: str = "") -> list[str]:
    """Publish a finished stage's artifacts, flag a filter or stage that rejected nearly
    everything (logged, in its summary and in the run's ``warnings`` artifact), and fail on
    an empty output unless ``allow_empty``. Returns the warnings."""
    log = get_run_logger()
    warnings = stage_warnings(manifest)
    loud = "".join(f"> **⚠ Warning:** {w}\n>\n" for w in warnings)
    publish_stage(manifest, samples=samples, extra_md=(loud + "\n" if loud else "") + extra_md)
    m = read_manifest(manifest)
    for w in warnings:
        log.warning("⚠ %s: %s", m.stage, w)
    if warnings:
        create_markdown_artifact(
            markdown="# ⚠ Warnings\n\n" + "".join(f"- **{m.stage}**: {w}\n" for w in warnings),
            key=artifact_key("warnings", m.stage),
            description=f"{m.stage}: settings that reject nearly everything",
        )
    log.info("%s: %s", m.stage, manifest)
    check_output(m, allow_empty)
    return [f"{m.stage}: {w}" for w in warnings]


def per_filter_md(manifest: str, materialized: dict[str, str] | None = None) -> str:
    """The filter stage's per-filter table for its summary artifact."""
    rows = [
        {
            "filter": f["filter"],
            "in": f["in"],
            "kept": f["kept"],
            "rejected": ", ".join(f"{k}: {v}" for k, v in f["rejected"].items()),
            "failed": ", ".join(f"{k}: {v}" for k, v in f["failed"].items()),
            "text bytes kept": f["text_bytes_kept"],
            "counts": ", ".join(f"{k}: {v}" for k, v in f["counts"].items()),
            **({"materialized": materialized.get(f["filter"], "")} if materialized else {}),
        }
        for f in filter_counts(manifest)
    ]
    return "## Per filter\n\n" + markdown_table(rows)


# --------------------------------------------------------------------------- funnel report


def text_bytes(manifest: Manifest) -> int:
    if "text_bytes_kept" in manifest.counts.extra:
        return int(manifest.counts.extra["text_bytes_kept"])
    total = 0
    for table in iter_stage_tables(manifest, columns=["text"]):
        total += pc.sum(pc.binary_length(pc.cast(table.column("text"), "binary"))).as_py() or 0
    return total


def _row(name: str, docs: int, nbytes: int, rejected: int, failed: int, docs0: int, bytes0: int) -> dict:
    return {
        "stage": name,
        "docs": docs,
        "bytes": nbytes,
        "docs_%": round(100 * docs / docs0, 1) if docs0 else 0.0,
        "bytes_%": round(100 * nbytes / bytes0, 1) if bytes0 else 0.0,
        "rejected": rejected,
        "failed": failed,
    }


def funnel_rows(extract_manifest: str, stages: dict[str, str]) -> list[dict]:
    """Documents and text bytes kept after each filter (from the filter stage's per-filter
    counts) and each later stage, against the input."""
    first = read_manifest(extract_manifest)
    docs0, bytes0 = first.counts.kept, text_bytes(first)
    rows = [_row("input", docs0, bytes0, 0, 0, docs0, bytes0)]
    for name, path in stages.items():
        m = read_manifest(path)
        if m.stage == "filters":
            rows += [
                _row(
                    f["filter"],
                    f["kept"],
                    f["text_bytes_kept"],
                    sum(f["rejected"].values()),
                    sum(f["failed"].values()),
                    docs0,
                    bytes0,
                )
                for f in filter_counts(m)
            ]
        else:
            c = m.counts
            rows.append(
                _row(
                    name,
                    c.kept,
                    text_bytes(m),
                    c.num_rejected,
                    c.num_failed,
                    docs0,
                    bytes0,
                )
            )
    return rows


def reject_samples(stages: dict[str, str], per_reason: int = 2, width: int = 300) -> list[dict]:
    """A few rejected documents per reason; ``stage`` is the filter for the filter stage's rejects."""
    out = []
    for name, path in stages.items():
        seen: dict[str, int] = {}
        for table in iter_stage_tables(read_manifest(path), kind="rejects"):
            for row in table.to_pylist():
                r = row.get("reason")
                if seen.get(r, 0) < per_reason:
                    seen[r] = seen.get(r, 0) + 1
                    text = (row.get("text") or "")[:width]
                    where = r.split(":", 1)[0] if name == "filters" and r and ":" in r else name
                    out.append({"stage": where, "reason": r, "id": row.get("id"), "url": row.get("url"), "text": text})
    return out


def plot_funnel(rows: list[dict], png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["stage"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, title in ((axes[0], "docs", "documents kept"), (axes[1], "bytes", "text bytes kept")):
        vals = [r[key] for r in rows]
        ax.bar(range(len(rows)), vals, color="#4c72b0")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        ax.set_title(title)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def publish_funnel(
    extract_manifest: str, stages: dict[str, str], root: str, warnings: list[str] | None = None
) -> Path | RemotePath:
    rows = funnel_rows(extract_manifest, stages)
    final = read_manifest(list(stages.values())[-1] if stages else extract_manifest)
    out = as_path(root) / "funnel" / final.fingerprint
    out.mkdir(parents=True, exist_ok=True)
    samples = reject_samples(stages)
    per_filter = filter_counts(stages["filters"]) if "filters" in stages else []
    atomic_write_json(
        out / "funnel.json",
        {
            "input": str(extract_manifest),
            "stages": stages,
            "rows": rows,
            "filters": per_filter,
            "reject_samples": samples,
            "warnings": list(warnings or []),
        },
    )
    # The plot is drawn into a local file (matplotlib, and the artifact embeds it), then
    # uploaded when the root is remote.
    local = out if isinstance(out, Path) else local_scratch("lmpipe-funnel-")
    png = plot_funnel(rows, local / "funnel.png")
    create_table_artifact(
        table=rows, key=artifact_key("funnel"), description="documents and text bytes kept after each stage"
    )
    loud = [f"> **⚠ Warning:** {w}" for w in warnings or []]
    md = [
        "# Filtering funnel",
        "",
        *loud,
        "",
        markdown_table(rows),
        image_markdown(png, "funnel"),
        "## Sample rejects per reason",
        "",
        markdown_table(samples),
    ]
    create_markdown_artifact(
        markdown="\n".join(md), key=artifact_key("funnel", "summary"), description="funnel, plot and sample rejects"
    )
    if isinstance(out, RemotePath):
        commit_file(png, out / "funnel.png")
        png.parent.rmdir()
    return out


# --------------------------------------------------------------------------- flow


class FiltersFlowConfig(Config):
    """Run the funnel on an existing extract stage (the ``data`` flow runs it after extract)."""

    model_config = ConfigDict(hide_input_in_errors=True)  # never echo a root URL with credentials

    extract_manifest: StageRef = Field(
        description="_manifest.json (or directory, or `extract@latest`) of the stage whose documents to filter"
    )
    root: str = Field(
        "outputs",
        description="artifact root: each stage writes `<root>/<stage>/<fingerprint>/`; "
        "a local directory or a URL such as `s3://bucket/prefix`",
    )
    filters: FunnelConfig = Field(default_factory=FunnelConfig, description="which stages run and their thresholds")
    allow_empty: bool = Field(
        False, description="let a stage that keeps no document pass (the flow fails on an empty output otherwise)"
    )
    max_workers: int = Field(
        4, ge=1, le=256, description="shards processed at once on this machine unless runner.max_workers is set"
    )
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig, description="where shard tasks run: threads (default), processes, Dask or Ray"
    )

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_root(v)


@flow(name="filters", log_prints=True)
def filters_flow(config: FiltersFlowConfig) -> dict[str, str]:
    with task_runner(config.runner, config.max_workers) as runner:
        stages = run_funnel(
            resolve_location(config.extract_manifest),
            resolve_location(config.root),
            config.filters,
            runner,
            allow_empty=config.allow_empty,
        )
    print(json.dumps(stages, indent=2))
    return stages
