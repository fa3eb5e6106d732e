"""deployments/prefect.yaml and the Kubernetes job template agree with the flows and configs."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from flows.cli import FLOWS, config_model, load_flow
from flows.pipeline import PipelineConfig, STAGES, plan, stage_config
from flows.server import REPO, deployment_entries
from deployments.sync_parameters import named_config, synced

GPU_STAGES = {"pretrain", "scaling", "sft", "dpo", "grpo", "evaluate", "align-demo", "pipeline"}
ENTRIES = deployment_entries()


def test_every_registered_flow_has_a_deployment_with_its_entrypoint():
    by_name = {e["name"]: e for e in ENTRIES}
    for name, target in FLOWS.items():
        module, func = target.split(":")
        assert name in by_name, f"flow {name!r} has no deployment in deployments/prefect.yaml"
        assert by_name[name]["entrypoint"] == f"{module.replace('.', '/')}.py:{func}"
        assert by_name[name]["exists"]


def test_pools_route_training_to_gpu_and_data_to_cpu():
    for e in ENTRIES:
        want = "gpu" if e["name"] in GPU_STAGES else "cpu"
        assert e["work_pool"]["name"] == want, e["name"]


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["exists"]], ids=lambda e: e["name"])
def test_parameters_are_the_named_config_and_validate(entry):
    named = named_config(entry["name"])
    model = config_model(load_flow(entry["name"]))
    if named is not None:
        assert entry["parameters"] == {"config": yaml.safe_load(named.read_text())}, (
            f"prefect.yaml parameters of {entry['name']} differ from {named}: run python deployments/sync_parameters.py"
        )
    if entry["parameters"]:
        model.model_validate(entry["parameters"]["config"])
    for s in entry.get("schedules", []):
        model.model_validate(s["parameters"]["config"])
        assert s["active"] is False, "example schedules ship inactive"


def test_prefect_yaml_is_in_sync_with_configs():
    text = (REPO / "deployments" / "prefect.yaml").read_text()
    assert synced(text) == text, "run python deployments/sync_parameters.py"


def test_pipeline_demo_config_fits_every_stage():
    cfg = PipelineConfig.model_validate(yaml.safe_load((REPO / "configs" / "pipeline-demo.yaml").read_text()))
    assert [s.name for s in plan(cfg)] == [s.name for s in STAGES if not s.optional]
    assert set(cfg.stages) == {s.name for s in STAGES}, "pipeline-demo.yaml: a section per stage"
    for spec in STAGES:  # optional ones too: raises naming the bad field
        stage_config(spec, cfg, {}, config_model(load_flow(spec.name)))


def test_pull_step_enters_the_repo():
    doc = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    assert doc["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $LMPIPE_REPO }}"}}]


def test_k8s_gpu_template_requests_gpus_and_declares_its_variables():
    t = json.loads((REPO / "deployments" / "k8s-gpu-job-template.json").read_text())
    container = t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    used = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(t["job_configuration"])))
    declared = set(t["variables"]["properties"])
    assert used <= declared, f"placeholders without a variable: {sorted(used - declared)}"
    assert t["variables"]["properties"]["gpu_count"]["default"] >= 1
