"""The `scaling` flow: plan an IsoFLOP sweep, train its runs (cached per run), fit, recommend.

    lmpipe run scaling --config configs/scaling-demo.yaml
    lmpipe run scaling --config configs/scaling-demo.yaml --set target_budget=1e13

Reads a token-shard directory (the tokenize stage's output). Each (budget, model size) pair
is one mapped training task whose result is cached under ``<root>/scaling-runs/<fp>/``, so
rerunning trains nothing and adding a budget or a size trains only the new runs. Writes the
``scaling`` stage (runs table, fits, plot; see tasks/scaling.py) and publishes the runs
table, the fitted-law table with intervals, and the recommendation with the IsoFLOP plot.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field, model_validator

from lm.scaling.sweep import ScalingConfig, byte_corpus, corpus_info, plan_runs
from tasks.artifacts import artifact_key, image_markdown, markdown_table, publish_stage
from tasks.scaling import finite_or_none, fit_scaling, stage_dir, train_scaling_run
from flows.runners import RunnerConfig, resolve_location, task_runner


class ScalingFlowConfig(ScalingConfig):
    """The sweep (lm.scaling.sweep.ScalingConfig) plus where its training runs execute."""

    runner: RunnerConfig = Field(
        default_factory=RunnerConfig,
        description="where training runs execute: threads (default), processes, or a Dask/Ray cluster (each run is one task); "
        "a local pool or cluster gets max_parallel_runs workers unless runner.max_workers is set",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_sweep(cls, data):
        # A plain ScalingConfig (tests, notebooks, the pipeline) runs on the default runner.
        if isinstance(data, ScalingConfig) and not isinstance(data, cls):
            return data.model_dump()
        return data


@flow(name="scaling")
def scaling_flow(config: ScalingFlowConfig) -> dict:
    log = get_run_logger()
    # Absolute paths: runs may execute in other processes or on other machines.
    config = config.model_copy(update={"root": resolve_location(config.root)})
    # a bad corpus fails here, before any training
    corpus = corpus_info(resolve_location(config.corpus) if config.corpus else byte_corpus(config.text, config.root))
    runs, plan_notes = plan_runs(config, corpus)
    for note in plan_notes:
        log.warning(note)
    if not runs:
        raise ValueError(f"no runs to train: every (budget, size) pair was skipped ({'; '.join(plan_notes)}); raise budgets")
    log.info(f"{len(runs)} runs planned over {len(config.budgets)} budgets")
    rows = []
    step = config.max_parallel_runs
    with task_runner(config.runner, config.max_parallel_runs) as runner:
        for wave in (runs[i : i + step] for i in range(0, len(runs), step)):
            futures = runner.map(train_scaling_run, {"run": wave, "corpus": unmapped(corpus), "root": unmapped(config.root),
                                                     "device": unmapped(config.device), "cpu_threads": unmapped(config.cpu_threads)})
            rows += [f.result() for f in futures]
    trained = sum(not r["cached"] for r in rows)
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        log.error(f"run {r['run_id']} failed: {r['note']}")
    manifest = fit_scaling(rows, config, corpus, plan_notes)
    out = stage_dir(manifest)
    publish(rows, out, manifest)
    rec = json.loads((out / "fits.json").read_text())["recommendation"]
    return {"manifest": manifest, "runs": len(rows), "trained": trained, "cached": len(rows) - trained,
            "failed": len(failed), "recommendation": rec}


def publish(rows: list[dict], out, manifest: str) -> None:
    table = [finite_or_none({k: r.get(k) for k in ("budget", "d_model", "num_layers", "params", "tokens", "compute", "steps",
                                                     "lr", "final_train_loss", "final_val_loss", "wall_time_s", "status", "cached")})
             for r in rows]
    create_table_artifact(table=table, key=artifact_key("scaling", "runs"), description="scaling: one row per training run")
    laws = json.loads((out / "laws.json").read_text())
    create_table_artifact(table=laws, key=artifact_key("scaling", "laws"), description="scaling: fitted laws with intervals")
    md = (out / "laws.md").read_text() + "\n" + image_markdown(out / "isoflop.png", "IsoFLOP profiles and N_opt vs C")
    create_markdown_artifact(markdown=md, key=artifact_key("scaling", "recommendation"),
                             description="scaling: recommendation for the target budget, plot")
    publish_stage(manifest, text_field=None, extra_md=markdown_table(table[:50]))
