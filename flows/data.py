"""The ``data`` flow: web archives → extracted text → filtering funnel → final corpus.

    lmpipe run data --config configs/data-demo.yaml
    lmpipe run data --set 'sources=["crawl/*.warc.gz"]' --set root=outputs
    lmpipe run data --config configs/data-demo.yaml --set runner.kind=dask --set runner.address=tcp://host:8786

Stage 1, ``extract``: reads every source (paths, globs, http(s) URLs, ``cc://`` listings),
one Prefect task per file (or per ``extract.slice_bytes`` slice of a big local gzip file),
and writes ``<root>/extract/<fingerprint>/`` (Parquet: id, url, source, text, …). Every record
ends kept, rejected with a reason or failed with a kind; the manifest holds the counts.
A stage whose manifest exists is skipped; a rerun after a crash redoes only missing shards.

``root`` is a local directory or a URL (``s3://bucket/prefix``; credentials from the
environment, see docs/storage.md); the stage contract is the same on both.

Then the funnel (``flows/funnel.py``, config ``filters``): the ``filters`` stage (langid → PII
→ rules → quality → harmful in one pass per shard) → exact line dedup → MinHash, each stage
its own directory; ``filters: null`` stops after extract. The stages themselves are defined in
``lm/`` (``lm.data.stages``) and run without Prefect too. A stage that keeps no document
fails the flow unless ``allow_empty: true``.

Shard tasks run on ``runner`` (flows/runners.py): threads by default, or processes, Dask
or Ray; the outputs are byte-identical whichever runs them.
"""

from __future__ import annotations

import json
import os

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner
from pydantic import ConfigDict, Field, field_validator, model_validator

from flows.funnel import finish_stage, run_funnel
from flows.funnel_config import FunnelConfig
from flows.runners import RunnerConfig, task_runner
from lm.config import Config
from lm.data.filters.stage import plan_filters
from lm.data.ingest import ExtractConfig
from lm.data.manifest import Manifest
from lm.data.remote import CC_BASE_URL, INDEX_PREFIX, HttpOptions, expand_sources
from lm.data.shards import read_manifest
from lm.data.stages import check_root_outside_sources, extract_stage, plan_extract
from lm.data.storage import check_root, resolve_root
from tasks.artifacts import artifact_key, markdown_table
from tasks.extract import commit_extract, extract_shard


class HttpConfig(Config):
    """How remote sources are fetched (does not change the output, so not fingerprinted)."""

    retries: int = Field(
        default=5, ge=0, le=100, description="attempts after the first per request (5xx, resets, timeouts)"
    )
    backoff_s: float = Field(default=0.5, gt=0, description="first wait between attempts; doubles each time")
    timeout_s: float = Field(default=60.0, gt=0, description="socket timeout per connect/read, seconds")
    cc_base_url: str = Field(
        default=CC_BASE_URL,
        description="base URL for cc:// listings without &base= and for relative filenames in index: files",
    )
    deadline_s: float | None = Field(
        default=3600.0,
        gt=0,
        description="overall time limit per remote source, seconds (a server "
        "that drips bytes is cut off there; the rest of that source is counted failed: source_deadline); null: none",
    )
    allow_local_index_paths: bool = Field(
        default=False,
        description="let index: files name local absolute paths (otherwise only "
        "http(s) URLs without credentials and paths relative to cc_base_url)",
    )

    def options(self) -> HttpOptions:
        return HttpOptions(
            retries=self.retries,
            backoff_s=self.backoff_s,
            timeout_s=self.timeout_s,
            deadline_s=self.deadline_s,
            allow_local_index_paths=self.allow_local_index_paths,
        )


class DataConfig(Config):
    """Configuration of the data flow (the Prefect UI shows it as the run form)."""

    # extra="forbid": a misspelt key fails, naming it. hide_input_in_errors: a root URL with
    # credentials in it must not be echoed back (our messages name the value, redacted).
    model_config = ConfigDict(hide_input_in_errors=True)

    sources: list[str] = Field(
        min_length=1,
        max_length=10_000,
        description="inputs: WARC/WET/ARC paths, globs, directories, http(s) URLs, "
        "`cc://CC-MAIN-2024-22?kind=wet&files=2` (first N files of a Common Crawl listing), or "
        "`index:<file>` (JSON/CDXJ lines with filename, offset, length: one Range request per record)",
    )
    root: str = Field(
        default="outputs",
        description="artifact root: stages write `<root>/<stage>/<fingerprint>/`; a local directory or a URL "
        "such as `s3://bucket/prefix` (credentials from the environment, never in the URL)",
    )
    extract: ExtractConfig = Field(default_factory=ExtractConfig, description="extract stage settings")
    http: HttpConfig = Field(default_factory=HttpConfig, description="remote fetching: retries, backoff, timeouts")
    max_workers: int = Field(
        default=4,
        ge=1,
        le=256,
        description="shards processed at once on this machine (threads, processes, "
        "or a local Dask/Ray cluster's workers) unless runner.max_workers is set",
    )
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig,
        description="where shard tasks run: threads (default), processes, "
        "a Dask or a Ray cluster (local, or an existing one by address); outputs are identical",
    )
    num_samples: int = Field(
        default=3, ge=0, le=50, description="sample documents shown in each stage's summary artifact"
    )
    filters: FunnelConfig | None = Field(
        default_factory=FunnelConfig,
        description=(
            "filtering funnel after extract (langid, PII, rules, quality, "
            "harmful, exact and MinHash dedup); null = stop after extract"
        ),
    )
    allow_empty: bool = Field(
        default=False,
        description="let a stage that keeps no document pass (the flow fails on an empty output otherwise)",
    )

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_root(v)

    @field_validator("sources")
    @classmethod
    def _no_blank(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise ValueError("sources: an entry is blank; give a path, glob, URL or cc:// listing")
        return v

    @model_validator(mode="after")
    def _root_outside_sources(self) -> DataConfig:
        check_root_outside_sources(self.root, self.sources)
        return self

    @model_validator(mode="after")
    def _reachable_by_cluster(self) -> DataConfig:
        # Workers of an existing cluster run elsewhere: a path relative to this process's
        # working directory means nothing there (a local pool or cluster shares it).
        if self.runner.address:
            for s in self.sources:
                if "://" not in s and not s.startswith(INDEX_PREFIX) and not os.path.isabs(os.path.expanduser(s)):
                    raise ValueError(
                        f"sources: {s!r} is relative; workers of the cluster at runner.address={self.runner.address} "
                        "cannot resolve it: give an absolute path on the shared filesystem, or a URL"
                    )
        return self

    def check_inputs(self) -> None:
        """Local sources exist (no network: URLs and cc:// listings are checked when read)."""
        expand_sources([s for s in self.sources if "://" not in s])

    def locations(self) -> list[str]:
        """Concrete input files/URLs. FileNotFoundError names a missing local path (before any work)."""
        specs = []
        for s in self.sources:
            if s.startswith("cc://") and "base=" not in s:  # listings default to the configured base URL
                s += f"{'&' if '?' in s else '?'}base={self.http.cc_base_url}"
            specs.append(s)
        return expand_sources(specs, self.http.options())


@flow(name="data", log_prints=True)
def data_flow(config: DataConfig) -> dict[str, str]:
    """Run the data stages; returns {stage: manifest path}."""
    log = get_run_logger()
    locations = config.locations()  # fails here, before any work, on a missing path
    plan = plan_extract(locations, config.extract, config.http.cc_base_url)
    for note in plan["notes"]:
        log.warning("extract: %s", note)
    # The filters' models are fetched or trained and their settings checked (language codes)
    # before extract starts: a bad setting must not surface after the crawl was read.
    filters = plan_filters(config.filters) if config.filters is not None else None
    root = resolve_root(config.root)  # absolute (workers do not share this cwd); URLs validated
    stage = extract_stage(root, config.extract, plan["digest"])
    log.info("tasks run on %s", config.runner.describe(config.max_workers))
    # One runner (one Dask/Ray cluster) for extract and every funnel stage.
    with task_runner(config.runner, config.max_workers) as runner:
        if stage.is_complete():
            log.info("extract: complete at %s (same inputs and config): skipped", stage.path)
        else:
            log.info("extract: %d source(s) → %d shard(s) → %s", len(locations), len(plan["shards"]), stage.path)
            _run_shards(runner, config, root, plan["digest"], plan["shards"])
            commit_extract(root, config.extract, plan["shards"], plan["notes"])
        manifest = str(stage.manifest_path)
        log.info("extract: %s", _counts_line(read_manifest(manifest)))
        finish_stage(manifest, config.allow_empty, samples=config.num_samples, extra_md=_per_source_md(manifest))
        stages = {"extract": manifest}
        if config.filters is not None:
            stages.update(
                run_funnel(manifest, root, config.filters, runner, allow_empty=config.allow_empty, plan=filters)
            )
    return stages


def _run_shards(runner: TaskRunner, config: DataConfig, root: str, plan: str, shards: list[dict]) -> None:
    """Map extract_shard over the shards on ``runner``; a progress artifact tracks them."""
    progress = create_progress_artifact(
        0.0, key=artifact_key("extract", "progress"), description="extract: shards finished"
    )
    http = config.http.options()
    futures = [
        runner.submit(
            extract_shard, {"root": root, "cfg": config.extract, "plan": plan, "index": i, "shard": shard, "http": http}
        )
        for i, shard in enumerate(shards)
    ]
    for done, fut in enumerate(as_completed(futures), 1):
        fut.result()  # a shard that failed after its retries fails the flow; a rerun resumes
        update_progress_artifact(progress, 100.0 * done / len(shards))


def _counts_line(m: Manifest) -> str:
    c = m.counts
    return f"in {c.num_in}, kept {c.kept}, rejected {c.num_rejected} {c.rejected}, failed {c.num_failed} {c.failed}"


def _per_source_md(manifest_path: str) -> str:
    """A per-shard table for the summary artifact: which input produced what."""
    m = read_manifest(manifest_path)
    rows = []
    for s in m.shards:
        mk = json.loads((m.dir / f"part-{s.index:05d}.done.json").read_text())  # the shard's marker
        rows.append(
            {
                "shard": s.index,
                "source": mk["source"],
                "in": mk["rows_in"],
                "kept": mk["kept"],
                "rejected": sum(mk["rejected"].values()),
                "failed": sum(mk["failed"].values()),
                "failed kinds": ", ".join(f"{k}: {v}" for k, v in mk["failed"].items()),
            }
        )
    return "## Per shard\n\n" + markdown_table(rows[:200])
