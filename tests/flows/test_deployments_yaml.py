"""deployments/prefect.yaml and the Kubernetes job template agree with the flows and configs."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from flows.pipeline import STAGES, PipelineConfig, plan, stage_config
from flows.registry import FLOWS, config_model, expand_prefect_yaml, expanded_prefect_file, load_flow
from flows.server import PREFECT_YAML, REPO, deployment_entries

GPU_STAGES = {"pretrain", "scaling", "sft", "dpo", "grpo", "evaluate", "align-demo", "pipeline"}
ENTRIES = deployment_entries()
# What `lmpipe deploy` registers: the named configs read into the parameters.
EXPANDED = {d["name"]: d for d in expand_prefect_yaml(yaml.safe_load(PREFECT_YAML.read_text()))["deployments"]}


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


def test_parameters_name_a_named_config_instead_of_repeating_it():
    """One source per named config: a deployment's parameters are `config: configs/<file>`."""
    for e in ENTRIES:
        cfg = (e.get("parameters") or {}).get("config")
        if e["name"] == "compare":  # two outputs to compare: nothing to default
            assert cfg is None
            continue
        assert isinstance(cfg, str) and cfg.startswith("configs/") and (REPO / cfg).is_file(), (e["name"], cfg)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["exists"]], ids=lambda e: e["name"])
def test_deployed_parameters_are_the_named_config_and_validate(entry):
    model = config_model(load_flow(entry["name"]))
    params = EXPANDED[entry["name"]]["parameters"]
    named = entry["parameters"].get("config")
    if named:
        assert params == {"config": yaml.safe_load((REPO / named).read_text())}
        model.model_construct(**params["config"])  # a named config may refer to stage@latest: resolved at run time
        for key in params["config"]:
            assert key in model.model_fields, f"{named}: unknown key {key!r}"
    for s in EXPANDED[entry["name"]].get("schedules", []):
        model.model_validate(s["parameters"]["config"])
        assert s["active"] is False, "example schedules ship inactive"


def test_lmpipe_deploy_registers_the_expanded_file():
    with expanded_prefect_file(PREFECT_YAML) as path:
        doc = yaml.safe_load(path.read_text())
    assert [d["name"] for d in doc["deployments"]] == [e["name"] for e in ENTRIES]
    assert doc["deployments"][0]["parameters"]["config"]["sources"], "data's named config read in"
    assert doc["pull"] == yaml.safe_load(PREFECT_YAML.read_text())["pull"]


def test_pipeline_demo_config_fits_every_stage():
    cfg = PipelineConfig.model_validate(yaml.safe_load((REPO / "configs" / "pipeline-demo.yaml").read_text()))
    assert [s.name for s in plan(cfg)] == [s.name for s in STAGES if not s.optional]
    assert cfg.stages.model_fields_set == {s.name for s in STAGES}, "pipeline-demo.yaml: a section per stage"
    assert all(getattr(cfg.stages, s.name).config for s in STAGES), "every section starts from its named config"
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
