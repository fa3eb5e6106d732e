"""The ``pipeline`` flow: the stages from crawl to aligned model as subflows, with lineage.

    lmpipe run pipeline --config configs/pipeline-demo.yaml
    lmpipe run pipeline --config configs/pipeline-demo.yaml \\
        --set start_from=tokenizer --set manifests.data=minhash@latest

Each stage is the flow registered under its name in ``flows.registry.FLOWS``; it takes one
``config`` and returns the path of the manifest it wrote. A stage's section in
``config.stages`` names the stage's named config (``config: configs/sft-demo.yaml``, the one
source of its settings) and overrides fields of it; the pipeline then fills each stage's
input fields with the manifest paths of the stages it depends on (``STAGES`` says which
field takes which), so stages talk only through manifests. A stage whose fingerprint
already exists finds its manifest and does no work; the lineage marks it ``reused``.

Reads:  ``config.manifests`` (outputs of stages before ``start_from``), the stages' inputs.
Writes: every stage's own directory, and ``<root>/pipeline/<fingerprint>/lineage.json`` +
        ``lineage.png``; artifacts ``pipeline-lineage`` (table) and ``pipeline-summary``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from flows.lineage import lineage_markdown, too_small, write_lineage
from flows.registry import FLOWS, config_model, load_flow, load_named_config
from lm.catalog import is_latest_ref, resolve_latest
from lm.config import Config, deep_merge, format_validation_error, partial_model, partial_overrides
from lm.data.shards import read_manifest
from lm.data.storage import check_local_root


@dataclass(frozen=True)
class StageSpec:
    """One pipeline stage: which flow, and how upstream outputs enter its config.

    ``inputs`` maps a (dotted) config field to the upstream stage whose manifest path fills it;
    ``fixed`` sets fields whenever the stage runs in the pipeline (e.g. clear an alternative
    input); ``derive`` maps a dotted field to a function of the upstream manifests that
    computes it (e.g. the model's vocab size from the token shards).
    """

    name: str  # key in flows.registry.FLOWS and a field of PipelineConfig.stages
    inputs: Mapping[str, str] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    derive: Mapping[str, Callable[[Mapping[str, str]], Any]] = field(default_factory=dict)
    optional: bool = False  # runs only when named in PipelineConfig.optional_stages
    root_field: str | None = "root"  # config field that takes PipelineConfig.root, if the model has it
    about: str = ""  # what the stage does, for the run form


def _vocab_from_tokens(manifests: Mapping[str, str]) -> int:
    return int(read_manifest(manifests["tokenize"])["vocab_size"])


# Every stage the pipeline knows, in the order they run; a stage's inputs name earlier stages.
# Only those whose flow is registered in flows.registry.FLOWS take part (see STAGES).
ALL_STAGES: list[StageSpec] = [
    StageSpec("data", about="Crawl to corpus: extract, filters, exact and MinHash dedup."),
    StageSpec("tokenizer", inputs={"input": "data"}, about="Train the BPE tokenizer on the corpus."),
    StageSpec(
        "tokenize", inputs={"input": "data", "tokenizer": "tokenizer"}, about="Encode the corpus into token shards."
    ),
    StageSpec(
        "pretrain",
        inputs={"tokens": "tokenize"},
        fixed={"text_file": None},
        derive={"train.model.vocab_size": _vocab_from_tokens},
        about="Pretrain the Transformer on the token shards.",
    ),
    # A side branch: fits scaling laws on the same token shards; nothing downstream reads it.
    StageSpec(
        "scaling",
        inputs={"corpus": "tokenize"},
        fixed={"text": None},
        optional=True,
        about="IsoFLOP sweep and scaling-law fits on the token shards (optional).",
    ),
    StageSpec("sft", inputs={"model_manifest": "pretrain"}, about="Supervised fine-tuning of the pretrained model."),
    StageSpec("dpo", inputs={"model_manifest": "sft"}, about="DPO on top of the SFT model."),
    StageSpec("grpo", inputs={"model_manifest": "dpo"}, about="GRPO with verifier rewards on top of the DPO model."),
    StageSpec("evaluate", inputs={"model_manifest": "grpo"}, about="Evaluate the GRPO model."),
]
STAGES: list[StageSpec] = [s for s in ALL_STAGES if s.name in FLOWS]
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
StageName = Literal[STAGE_NAMES]  # type: ignore[valid-type]  # a dropdown in the UI form


def stage_names(stages: list[StageSpec] | None = None) -> list[str]:
    return [s.name for s in (stages if stages is not None else STAGES)]


_NAMED = Field(
    None,
    description="Named config file the stage starts from, e.g. `configs/sft-demo.yaml` (relative to the checkout; "
    "the one place its settings live). The fields below override it; empty = the stage's own defaults.",
)


def _section_model(spec: StageSpec) -> type[Config]:
    """A stage's section of the run form: a named config plus any of the stage's fields."""
    model = config_model(spec.name)
    return partial_model(model, name=f"{model.__name__}Section", config=(str | None, _NAMED))


def _stages_model() -> type[Config]:
    fields: dict[str, Any] = {}
    for s in STAGES:
        section = _section_model(s)
        fed = ", ".join(f"`{f}` from {up}" for f, up in s.inputs.items())
        fields[s.name] = (
            section,
            Field(
                default_factory=section,
                description=f"{s.about} The pipeline fills `root`" + (f" and {fed}" if fed else "") + ".",
            ),
        )
    return create_model(
        "PipelineStages", __base__=Config, __doc__="Each stage's config: a named config file plus overrides.", **fields
    )


def _manifests_model() -> type[Config]:
    fields = {
        s.name: (
            str | None,
            Field(
                None,
                description=f"Output of `{s.name}` from an earlier run (manifest, stage "
                f"directory or `stage@latest`); needed when starting after it.",
            ),
        )
        for s in STAGES
    }
    return create_model("PipelineManifests", __base__=Config, __doc__="Outputs of stages that already ran.", **fields)


PipelineStages = _stages_model()
PipelineManifests = _manifests_model()


class PipelineConfig(Config):
    """What the pipeline runs and with which stage configs."""

    # Descriptions are markdown in the UI: no angle brackets (`<root>` renders as an HTML tag).
    root: str = Field("outputs", description="Directory every stage writes under, as `root/stage/fingerprint/`.")
    stages: PipelineStages = Field(  # type: ignore[valid-type]
        default_factory=PipelineStages,
        description="Config of each stage: its named config file and fields that override it (see configs/). "
        "Fields left empty come from the named config, else the "
        "stage's defaults; input manifests are filled by the pipeline.",
    )
    start_from: StageName | None = Field(  # type: ignore[valid-type]
        None,
        description="First stage to run (default: the first stage). Stages before it must be given in `manifests`.",
    )
    stop_after: StageName | None = Field(None, description="Last stage to run (default: the last stage).")  # type: ignore[valid-type]
    manifests: PipelineManifests = Field(  # type: ignore[valid-type]
        default_factory=PipelineManifests,
        description="Outputs of stages that already ran, by stage; needed for stages before start_from.",
    )
    optional_stages: list[StageName] = Field(  # type: ignore[valid-type]
        default_factory=list, max_length=len(STAGE_NAMES), description="Optional stages to run too (e.g. scaling)."
    )
    use_deployments: bool = Field(
        False,
        description="Run each stage through its deployment (on that deployment's work pool: data stages on cpu, "
        "training on gpu) instead of in this process. Needs `lmpipe deploy`, workers that share `root`, and "
        "persisted results (lmpipe server sets PREFECT_RESULTS_PERSIST_BY_DEFAULT for its workers).",
    )

    @field_validator("root")
    @classmethod
    def _local_root(cls, v: str) -> str:
        return check_local_root(v, "pipeline")  # URL roots: see docs/storage.md

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        for name, ref in given_manifests(self).items():  # stage@latest under this pipeline's root
            if is_latest_ref(ref):
                try:
                    setattr(self.manifests, name, resolve_latest(ref, self.root))
                except FileNotFoundError as e:
                    raise ValueError(f"manifests.{name}={ref!r}: {e}") from e
        names = stage_names()
        if self.start_from and self.stop_after and names.index(self.start_from) > names.index(self.stop_after):
            raise ValueError(
                f"start_from={self.start_from!r} comes after stop_after={self.stop_after!r} (order: {names})"
            )
        optional = {s.name for s in STAGES if s.optional}
        bad = [s for s in self.optional_stages if s not in optional]
        if bad:
            raise ValueError(f"optional_stages: {bad} always run; the optional stages are {sorted(optional)}")
        return self

    def check_inputs(self) -> None:
        """Plan the run and validate every stage's config (inputs included) without running anything."""
        preflight(self)


def given_manifests(config: PipelineConfig) -> dict[str, str]:
    """Stage name -> manifest path of the stages given in ``config.manifests``."""
    m = config.manifests
    return dict(m) if isinstance(m, Mapping) else {k: v for k, v in m.model_dump().items() if v is not None}


def stage_section(config: PipelineConfig, name: str) -> dict:
    """A stage's config as plain data: its named config file with the section's fields on top."""
    sections = config.stages
    if isinstance(sections, Mapping):  # tests build configs with model_construct
        return json.loads(json.dumps(sections.get(name, {})))
    section = getattr(sections, name, None)
    if section is None:
        return {}
    named = section.config
    return deep_merge(load_named_config(named) if named else {}, partial_overrides(section, exclude={"config"}))


def plan(config: PipelineConfig, stages: list[StageSpec] | None = None) -> list[StageSpec]:
    """The stages to run, in order; fails (before any work) if a needed manifest is missing."""
    stages = STAGES if stages is None else stages
    names = stage_names(stages)
    lo = names.index(config.start_from) if config.start_from else 0
    hi = names.index(config.stop_after) if config.stop_after else len(names) - 1
    run = [s for s in stages[lo : hi + 1] if not s.optional or s.name in config.optional_stages]
    given = given_manifests(config)
    available = set(given)
    for s in run:
        missing = sorted({up for up in s.inputs.values() if up not in available})
        if missing:
            raise ValueError(
                f"stage {s.name!r} needs the manifest of {missing}: run from an earlier stage or "
                f"give manifests.{missing[0]}=<path to its _manifest.json, or stage@latest>"
            )
        available.add(s.name)
    for path in given.values():
        read_manifest(path)  # FileNotFoundError/ShardCorruptError now, not halfway through
    return run


def preflight(config: PipelineConfig) -> list[StageSpec]:
    """Everything that can be checked before the first stage runs: the plan, every stage's
    config, and the inputs of stages that read no upstream output (e.g. the data sources)."""
    todo = plan(config)
    given = given_manifests(config)
    for s in todo:
        cfg = stage_config(s, config, given, config_model(s.name))
        if not upstream_missing(s, given) and isinstance(cfg, Config):
            cfg.check_inputs()
    return todo


_PLACEHOLDER = "<manifest from upstream stage>"


def _is_list_field(model: type[BaseModel], name: str) -> bool:
    ann = model.model_fields[name].annotation
    return typing.get_origin(ann) in (list, tuple) or any(
        typing.get_origin(a) in (list, tuple) for a in typing.get_args(ann)
    )


def _set(d: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for k in parents:
        d = d.setdefault(k, {})
    d[last] = value


def stage_config(
    spec: StageSpec, config: PipelineConfig, manifests: Mapping[str, str], model: type[BaseModel]
) -> BaseModel:
    """Validate a stage's config: its named config and section, root, fixed and derived
    fields, upstream manifest paths.

    Before the upstream stages have run (the check before any work), input fields hold a
    placeholder and only errors in the other fields count.
    """
    section = (
        getattr(config.stages, spec.name, None)
        if not isinstance(config.stages, Mapping)
        else config.stages.get(spec.name)
    )
    own = set(partial_overrides(section)) if isinstance(section, BaseModel) else set(section or {})
    data = stage_section(config, spec.name)
    if spec.root_field and spec.root_field in model.model_fields and spec.root_field not in own:
        data[spec.root_field] = config.root  # the pipeline's root, unless the section sets its own
    for dotted, value in spec.fixed.items():
        _set(data, dotted, value)
    dry = upstream_missing(spec, manifests)
    if not dry:
        for dotted, fn in spec.derive.items():
            _set(data, dotted, fn(manifests))
    for dotted, upstream in spec.inputs.items():
        top = dotted.split(".")[0]
        if top not in model.model_fields:
            raise ValueError(
                f"stage {spec.name!r}: {model.__name__} has no field {top!r} for the {upstream} manifest (fix STAGES)"
            )
        path = manifests.get(upstream, _PLACEHOLDER)
        _set(data, dotted, [path] if "." not in dotted and _is_list_field(model, dotted) else path)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # Before upstream stages ran, their outputs (and what derives from them) are unknown.
        filled_later = [tuple(d.split(".")) for d in (*spec.inputs, *spec.derive)]
        errors = [
            err for err in e.errors() if not (dry and any(tuple(err["loc"][: len(f)]) == f for f in filled_later))
        ]
        if errors:
            raise StageConfigError(spec.name, e) from e
        return model.model_construct(**data)


class StageConfigError(ValueError):
    """A pipeline stage's config does not validate (names the stage and the fields)."""

    def __init__(self, stage: str, error: ValidationError):
        self.stage, self.error = stage, error
        super().__init__(format_validation_error(error, where=f"stages.{stage}"))


def upstream_missing(spec: StageSpec, manifests: Mapping[str, str]) -> bool:
    return any(up not in manifests for up in spec.inputs.values())


def result_manifest(name: str, result: Any) -> str:
    """A stage flow returns its manifest path, a mapping with a ``manifest`` key, or
    ``{stage: manifest path}`` in the order its stages ran (the data flow: the last is its output)."""
    if isinstance(result, Mapping) and "manifest" in result:  # e.g. scaling: {"manifest": …, "runs": …}
        result = result["manifest"]
    elif isinstance(result, Mapping) and result:
        result = list(result.values())[-1]
    if isinstance(result, (str, os.PathLike)):
        return str(read_manifest(result)["_path"])
    raise TypeError(f"stage {name!r} returned {type(result).__name__}; a stage flow must return its manifest path")


def run_stage_deployment(name: str, cfg: BaseModel) -> Any:
    """Run a stage as its deployment ``<flow name>/<stage name>`` (deployments/prefect.yaml),
    linked to this run as a subflow; wait for it and return its (persisted) result."""
    from prefect.deployments import run_deployment

    flow_name = load_flow(name).name
    run = run_deployment(
        name=f"{flow_name}/{name}", parameters={"config": cfg.model_dump(mode="json")}, as_subflow=True
    )
    if run.state is None or not run.state.is_completed():
        raise RuntimeError(
            f"stage {name!r} (deployment {flow_name}/{name}, flow "
            f"run {run.id}) ended {run.state}; see its logs in the UI"
        )
    try:
        return read_json_result(run.state)
    except (OSError, ValueError, KeyError, TypeError) as e:  # missing/foreign records: say what to configure
        raise RuntimeError(
            f"stage {name!r} finished but its result (the manifest path) is not readable here ({e}); workers must run "
            "with PREFECT_RESULTS_PERSIST_BY_DEFAULT=true, PREFECT_RESULTS_DEFAULT_SERIALIZER=json (lmpipe server sets "
            "both) and a PREFECT_LOCAL_STORAGE_PATH this worker can read"
        ) from e


def _json_serialized(meta: Mapping, where: str) -> None:
    kind = (meta.get("serializer") or {}).get("type")
    if kind != "json":
        raise ValueError(
            f"the result {where} names serializer {kind!r}; lmpipe reads only 'json' results (never pickle)"
        )


def read_json_result(state: Any) -> Any:
    """What a (remote) flow run returned, from its persisted result record, as plain JSON.

    Never ``state.result()``: that deserializes with whatever serializer the record on disk
    names (cloudpickle by default), so whoever can write the result storage could run code
    here. This reads the record as JSON and accepts only a ``json``-serialized result.
    """
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    meta = state.data
    meta = getattr(meta, "metadata", meta)  # a state read from the API carries the metadata alone
    meta = meta.model_dump(mode="json") if hasattr(meta, "model_dump") else meta
    if not isinstance(meta, Mapping) or not meta.get("storage_key"):
        raise ValueError(f"the run's state carries no persisted result record ({type(state.data).__name__})")
    if meta.get("storage_block_id"):
        raise ValueError("the result is in a storage block; lmpipe reads results from local storage only")
    _json_serialized(meta, "state")
    path = Path(meta["storage_key"])
    path = path if path.is_absolute() else Path(PREFECT_LOCAL_STORAGE_PATH.value()) / path
    stored = json.loads(path.read_bytes())
    # Prefect 3.8.8 stores the serialized value alone (its metadata is the state's); a whole
    # record ({metadata, result}) names its serializer again.
    if isinstance(stored, Mapping) and set(stored) == {"metadata", "result"}:
        _json_serialized(stored["metadata"], f"record {path}")
        return json.loads(stored["result"])
    return stored


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: PipelineConfig) -> str:
    """Run the stages in order as subflows, passing manifest paths; publish the lineage."""
    from prefect.artifacts import (
        create_markdown_artifact,
        create_progress_artifact,
        create_table_artifact,
        update_progress_artifact,
    )

    log = get_run_logger()
    started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    # Validate every stage's config before the first one starts: a typo in the last stage
    # must not surface after an hour of training.
    todo = preflight(config)
    models = {s.name: config_model(s.name) for s in todo}

    manifests = {k: str(read_manifest(v)["_path"]) for k, v in given_manifests(config).items()}
    produced: dict[str, str] = {}
    warnings: list[str] = []
    progress = create_progress_artifact(
        0.0, key="pipeline-progress", description=f"stages finished of {[s.name for s in todo]}"
    )
    for i, s in enumerate(todo, 1):
        cfg = stage_config(s, config, manifests, models[s.name])
        log.info("stage %s: %s", s.name, FLOWS[s.name])
        if config.use_deployments:
            result = run_stage_deployment(s.name, cfg)
        else:
            result = load_flow(s.name)(config=cfg)
        manifests[s.name] = produced[s.name] = result_manifest(s.name, result)
        log.info("stage %s -> %s", s.name, manifests[s.name])
        if warning := too_small(s.name, manifests[s.name]):
            log.warning("%s", warning)
            warnings.append(warning)
        update_progress_artifact(progress, 100.0 * i / len(todo))

    given = {k: v for k, v in manifests.items() if k not in produced}
    out, rows, png = write_lineage(config.root, produced, started_at, given, warnings)
    create_table_artifact(
        table=rows,
        key="pipeline-lineage",
        description="Every stage output this run used: fingerprint, counts, directory",
    )
    create_markdown_artifact(
        markdown=lineage_markdown(rows, png, out, warnings),
        key="pipeline-summary",
        description="Pipeline lineage with the documents funnel of the data stages",
    )
    return str(out / "lineage.json")
