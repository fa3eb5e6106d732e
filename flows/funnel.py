"""The filtering funnel: extracted text → langid → PII → rules → quality → harmful →
exact line dedup → MinHash → final corpus.

``run_funnel`` is called inside a flow (the ``data`` flow, or ``filters`` below on an
existing extract stage). Every stage is its own directory under ``root`` with its own
fingerprint (its config + its input's fingerprint), so changing one threshold recomputes
that stage and the ones after it, and nothing before. It publishes each stage's counts,
a funnel table (documents and text bytes kept after each stage), sample rejects per
reason, and a funnel plot (``<root>/funnel/<final fingerprint>/funnel.png``).

    lmpipe run filters --set extract_manifest=outputs/extract/<fp>/_manifest.json --set filters.quality.min_score=0.3
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import TaskRunner
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from pydantic import ConfigDict, Field, field_validator

from flows.funnel_config import FunnelConfig
from flows.runners import RunnerConfig, resolve_location, task_runner
from lm.config import Config, StageRef
from lm.data.shards import atomic_write_json, iter_stage_tables, read_manifest, source_fingerprint
from lm.data.storage import RemotePath, as_path, check_root, commit_file, local_scratch
from tasks import dedup
from tasks.artifacts import artifact_key, image_markdown, markdown_table, publish_stage
from tasks.filters import filter_shard, filter_stage

FILTER_STAGES = ("langid", "pii", "rules", "quality", "harmful")


def _wait(futures, stage: str) -> None:
    """Wait for a stage's shard tasks; a progress artifact shows how many have finished."""
    futures = list(futures)
    progress = create_progress_artifact(0.0, key=artifact_key(stage, "progress"), description=f"{stage}: shards finished")
    for done, f in enumerate(as_completed(futures), 1):
        f.result()  # re-raises a shard's error after its retries
        update_progress_artifact(progress, 100.0 * done / len(futures))


def _map(runner: TaskRunner, task, label: str, over: dict[str, list], /, **fixed) -> None:
    """One ``task`` run per element of ``over`` (one shard each) on ``runner``; wait for all."""
    _wait(runner.map(task, {**{k: unmapped(v) for k, v in fixed.items()}, **over}), label)


def _filter(runner: TaskRunner, root: str, name: str, cfg: dict, docs: str) -> str:
    st = filter_stage(root, name, cfg, docs)
    if not st.is_complete():
        n = dedup.num_shards(docs)
        _map(runner, filter_shard, name, {"index": list(range(n))}, root=root, stage=name, config=cfg, input_manifest=docs)
        st.commit(num_shards=n)
    return str(st.manifest_path)


def _exact_dedup(runner: TaskRunner, root: str, cfg: dict, docs: str) -> str:
    n = dedup.num_shards(docs)
    shards = {"index": list(range(n))}
    counts = dedup.line_counts_stage(root, docs)
    if not counts.is_complete():
        _map(runner, dedup.line_counts_shard, "line_counts", shards, root=root, docs=docs)
        counts.commit(num_shards=n)
    dups = dedup.line_duplicates(root, str(counts.manifest_path))
    st = dedup.exact_dedup_stage(root, cfg, docs, dups)
    if not st.is_complete():
        _map(runner, dedup.exact_dedup_shard, "exact_dedup", shards, root=root, config=cfg, docs=docs, duplicates=dups)
        st.commit(num_shards=n)
    return str(st.manifest_path)


def _minhash(runner: TaskRunner, root: str, cfg: dict, docs: str) -> str:
    n = dedup.num_shards(docs)
    shards = {"index": list(range(n))}
    sigs = dedup.signatures_stage(root, cfg, docs)
    if not sigs.is_complete():
        _map(runner, dedup.signatures_shard, "minhash_signatures", shards, root=root, cfg=cfg, docs=docs)
        sigs.commit(num_shards=n)
    sigs_path = str(sigs.manifest_path)
    buckets = dedup.buckets_stage(root, cfg, sigs_path)
    groups = min(cfg["num_bucket_tasks"], cfg["num_bands"])
    if not buckets.is_complete():
        _map(runner, dedup.buckets_group, "minhash_buckets", {"group": list(range(groups))}, root=root, cfg=cfg, signatures=sigs_path)
        buckets.commit(num_shards=groups)
    clusters = dedup.clusters(root, cfg, str(buckets.manifest_path), docs)
    st = dedup.minhash_stage(root, cfg, docs, clusters)
    if not st.is_complete():
        _map(runner, dedup.minhash_filter_shard, "minhash", shards, root=root, cfg=cfg, docs=docs, clusters_manifest=clusters)
        st.commit(num_shards=n)
    return str(st.manifest_path)


def _model_identity(kind: str, path: str | None) -> str:
    """Which model file a classifier stage uses (path, size, mtime), for its fingerprint:
    a retrained or replaced model makes a new stage directory. The default model is trained
    here first if missing, so its identity is known before the stage starts."""
    from lm.data.quality import default_model_path, resolve_model

    if path is None:
        resolve_model(kind, None)
        path = str(default_model_path(kind))
    return source_fingerprint(path)


def stage_config(name: str, section) -> dict:
    cfg = section.stage_config()
    if name == "langid":
        from lm.data.langid import lid_model_path

        lid_model_path()  # fetch the model once here, not in several worker processes at the same time
    if name == "quality":
        cfg["model"] = _model_identity("quality", cfg["model_path"])
    if name == "harmful":
        for kind in ("nsfw", "toxic"):
            if cfg[kind]:
                cfg[f"{kind}_model"] = _model_identity(kind, cfg[f"{kind}_model_path"])
    return cfg


def run_funnel(extract_manifest: str, root: str, config: FunnelConfig, runner: TaskRunner) -> dict[str, str]:
    """Run the enabled stages in order, shard tasks on ``runner`` (started); returns stage
    name → manifest path (last = final corpus)."""
    logger = get_run_logger()
    read_manifest(extract_manifest)  # fail early on a missing or broken input
    stages: dict[str, str] = {}
    docs = str(extract_manifest)
    for name in FILTER_STAGES:
        cfg = getattr(config, name)
        if cfg.enabled:
            docs = stages[name] = _filter(runner, root, name, stage_config(name, cfg), docs)
            publish_stage(docs)
            logger.info("%s: %s", name, docs)
    if config.exact_dedup.enabled:
        docs = stages["exact_dedup"] = _exact_dedup(runner, root, config.exact_dedup.stage_config(), docs)
        publish_stage(docs)
    if config.minhash.enabled:
        docs = stages["minhash"] = _minhash(runner, root, config.minhash.stage_config(), docs)
        publish_stage(docs)
    publish_funnel(extract_manifest, stages, root)
    return stages


# --------------------------------------------------------------------------- funnel report


def text_bytes(manifest: dict) -> int:
    if "text_bytes_kept" in manifest["counts"]:
        return int(manifest["counts"]["text_bytes_kept"])
    total = 0
    for table in iter_stage_tables(manifest, columns=["text"]):
        total += pc.sum(pc.binary_length(pc.cast(table.column("text"), "binary"))).as_py() or 0
    return total


def funnel_rows(extract_manifest: str, stages: dict[str, str]) -> list[dict]:
    first = read_manifest(extract_manifest)
    docs0, bytes0 = first["counts"]["kept"], text_bytes(first)
    rows = []
    for name, path in [("input", extract_manifest), *stages.items()]:
        m = read_manifest(path)
        d, b = m["counts"]["kept"], text_bytes(m)
        rows.append({
            "stage": name, "docs": d, "bytes": b,
            "docs_%": round(100 * d / docs0, 1) if docs0 else 0.0,
            "bytes_%": round(100 * b / bytes0, 1) if bytes0 else 0.0,
            "rejected": sum(m["counts"]["rejected"].values()) if name != "input" else 0,
            "failed": sum(m["counts"]["failed"].values()) if name != "input" else 0,
        })
    return rows


def reject_samples(stages: dict[str, str], per_reason: int = 2, width: int = 300) -> list[dict]:
    out = []
    for name, path in stages.items():
        seen: dict[str, int] = {}
        for table in iter_stage_tables(read_manifest(path), kind="rejects"):
            for row in table.to_pylist():
                r = row.get("reason")
                if seen.get(r, 0) < per_reason:
                    seen[r] = seen.get(r, 0) + 1
                    text = (row.get("text") or "")[:width]
                    out.append({"stage": name, "reason": r, "id": row.get("id"), "url": row.get("url"), "text": text})
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


def publish_funnel(extract_manifest: str, stages: dict[str, str], root: str) -> Path | RemotePath:
    rows = funnel_rows(extract_manifest, stages)
    final = read_manifest(list(stages.values())[-1] if stages else extract_manifest)
    out = as_path(root) / "funnel" / final["fingerprint"]
    out.mkdir(parents=True, exist_ok=True)
    samples = reject_samples(stages)
    atomic_write_json(out / "funnel.json", {"input": str(extract_manifest), "stages": stages, "rows": rows, "reject_samples": samples})
    # The plot is drawn into a local file (matplotlib, and the artifact embeds it), then
    # uploaded when the root is remote.
    local = out if isinstance(out, Path) else local_scratch("lmpipe-funnel-")
    png = plot_funnel(rows, local / "funnel.png")
    create_table_artifact(table=rows, key=artifact_key("funnel"), description="documents and text bytes kept after each stage")
    md = ["# Filtering funnel", "", markdown_table(rows), image_markdown(png, "funnel"), "## Sample rejects per reason", "", markdown_table(samples)]
    create_markdown_artifact(markdown="\n".join(md), key=artifact_key("funnel", "summary"), description="funnel, plot and sample rejects")
    if isinstance(out, RemotePath):
        commit_file(png, out / "funnel.png")
        png.parent.rmdir()
    return out


# --------------------------------------------------------------------------- flow


class FiltersFlowConfig(Config):
    """Run the funnel on an existing extract stage (the ``data`` flow runs it after extract)."""

    model_config = ConfigDict(hide_input_in_errors=True)  # never echo a root URL with credentials

    extract_manifest: StageRef = Field(description="_manifest.json (or directory, or `extract@latest`) of the stage whose documents to filter")
    root: str = Field("outputs", description="artifact root: each stage writes `<root>/<stage>/<fingerprint>/`; "
                      "a local directory or a URL such as `s3://bucket/prefix`")
    filters: FunnelConfig = Field(default_factory=FunnelConfig, description="which stages run and their thresholds")
    max_workers: int = Field(4, ge=1, le=256, description="shards processed at once on this machine unless runner.max_workers is set")
    runner: RunnerConfig = Field(default_factory=RunnerConfig, description="where shard tasks run: threads (default), processes, Dask or Ray")


    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_root(v)


@flow(name="filters", log_prints=True)
def filters_flow(config: FiltersFlowConfig) -> dict[str, str]:
    with task_runner(config.runner, config.max_workers) as runner:
        stages = run_funnel(resolve_location(config.extract_manifest), resolve_location(config.root), config.filters, runner)
    print(json.dumps(stages, indent=2))
    return stages
