"""Deployments end to end: a real server and process workers on loopback, the deployments
of deployments/prefect.yaml registered, one triggered by name with parameters."""

from __future__ import annotations

import pytest

from flows.server import deployment_entries
from tests.e2e.helpers import api_client, data_config, run_by_name

# A real server and workers: tens of seconds; deselect with -m 'not slow'.
pytestmark = pytest.mark.slow


def run_artifacts(server, flow_run_id) -> dict:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with api_client(server) as client:
        arts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: a for a in arts if a.key}


def test_every_existing_flow_is_deployed_to_its_pool(local_prefect, deployed):
    entries = [e for e in deployment_entries() if e["exists"]]
    with api_client(local_prefect) as client:
        deps = {d.name: d for d in client.read_deployments()}
    assert set(deps) == {e["name"] for e in entries}
    for e in entries:
        d = deps[e["name"]]
        assert d.work_pool_name == e["work_pool"]["name"], e["name"]
        assert d.entrypoint == e["entrypoint"]
        # One typed parameter, `config`, whose fields carry descriptions: the UI's form.
        schema = d.parameter_openapi_schema
        assert list(schema["properties"]) == ["config"], e["name"]
        model = schema["definitions"][schema["properties"]["config"]["$ref"].rsplit("/", 1)[1]]
        undocumented = [f for f, p in model["properties"].items() if not p.get("description")]
        assert not undocumented, f"{e['name']}: fields without description {undocumented}"
    # The pipeline deployment runs on what `lmpipe demo` runs on.
    from flows.demo import demo_sources

    assert deps["pipeline"].parameters["config"]["stages"]["data"]["sources"] == demo_sources()
    # The weekly ingest exists but waits for a person to turn it on.
    assert [(s.schedule.cron, s.active) for s in deps["data"].schedules] == [("0 3 * * 1", False)]
    assert {"cpu", "gpu"} <= {e["work_pool"]["name"] for e in deployment_entries()}


def test_data_deployment_runs_on_a_worker(local_prefect, deployed, reference, tmp_path):
    run = run_by_name(local_prefect, "data/data", {"config": data_config(tmp_path, reference)})
    assert run.state is not None and run.state.is_completed(), (
        f"{run.state}; workers log to {local_prefect.log_dir}/lmpipe-server.log"
    )
    manifests = sorted(tmp_path.glob("*/*/_manifest.json"))
    assert manifests, f"the run completed but wrote no stage under {tmp_path}"
    keys = set(run_artifacts(local_prefect, run.id))
    assert any(k.endswith("-counts") for k in keys) and any(k.endswith("-summary") for k in keys), keys


def test_bad_parameters_are_refused_before_a_run_starts(local_prefect, deployed, tmp_path):
    from prefect.exceptions import PrefectHTTPStatusError

    # The server checks parameters against the flow's schema (enforce_parameter_schema).
    with pytest.raises(PrefectHTTPStatusError) as e:
        run_by_name(local_prefect, "data/data", {"config": {"root": str(tmp_path), "sources": "not-a-list"}}, timeout=0)
    assert "sources" in str(e.value.response.text)


def test_server_accepts_the_k8s_gpu_job_template(local_prefect):
    """The Kubernetes example is a base job template the server takes for a new pool
    (it checks that every placeholder is a declared variable)."""
    import json

    from flows.server import REPO, _api_request

    template = json.loads((REPO / "deployments" / "k8s-gpu-job-template.json").read_text())
    auth = local_prefect.auth
    _api_request(
        f"{local_prefect.api}/work_pools/",
        {"name": "gpu-k8s", "type": "kubernetes", "base_job_template": template},
        auth=auth,
    )
    pool = _api_request(f"{local_prefect.api}/work_pools/gpu-k8s", auth=auth)
    assert pool["type"] == "kubernetes"
    assert pool["base_job_template"]["variables"]["properties"]["gpu_count"]["default"] == 1
    # A template with an undeclared placeholder is refused: the check above is real.
    bad = json.loads(json.dumps(template))
    bad["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["priorityClassName"] = "{{ no_such_variable }}"
    with pytest.raises(RuntimeError, match="no_such_variable"):
        _api_request(
            f"{local_prefect.api}/work_pools/",
            {"name": "gpu-k8s-bad", "type": "kubernetes", "base_job_template": bad},
            auth=auth,
        )
