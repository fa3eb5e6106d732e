"""The `pipeline` run form as the Prefect server holds it after `lmpipe deploy`: one section per
stage (a named config + that stage's fields, each described), defaults read from
configs/pipeline-demo.yaml, unknown keys refused by the server before a run exists."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from flows.pipeline import STAGES, PipelineConfig
from flows.registry import REPO, load_named_config
from tests.e2e.helpers import api_client

pytestmark = pytest.mark.slow


def pipeline_deployment(server):
    with api_client(server) as client:
        return client.read_deployment_by_name("pipeline/pipeline")


def test_the_form_has_a_described_section_per_stage(local_prefect, deployed):
    dep = pipeline_deployment(local_prefect)
    schema = dep.parameter_openapi_schema
    defs = schema["definitions"]
    undocumented = [
        f"{name}.{p}"
        for name, d in defs.items()
        for p, v in d.get("properties", {}).items()
        if not v.get("description")
    ]
    assert not undocumented, undocumented
    stages = defs["PipelineStages"]["properties"]
    assert list(stages) == [s.name for s in STAGES]
    sft = defs[stages["sft"]["$ref"].rsplit("/", 1)[1]]["properties"]
    assert "config" in sft and "num_steps" in defs[sft["sft"]["$ref"].rsplit("/", 1)[1]]["properties"]
    assert defs["PipelineConfig"]["properties"]["start_from"]["anyOf"][0]["enum"] == [s.name for s in STAGES]
    # The defaults are configs/pipeline-demo.yaml, read in by `lmpipe deploy`; they name the stage files.
    # `lmpipe deploy` gives the data stage the sources `lmpipe demo` uses (flows/server.py:use_demo_sources).
    from flows.demo import demo_sources

    expected = load_named_config("configs/pipeline-demo.yaml")
    expected["stages"]["data"]["sources"] = demo_sources()
    assert dep.parameters == {"config": expected}
    assert dep.parameters["config"]["stages"]["sft"]["config"] == "configs/sft-demo.yaml"
    PipelineConfig.model_validate(dep.parameters["config"])
    data = [
        d
        for d in yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "data"
    ][0]
    with api_client(local_prefect) as client:
        assert client.read_deployment_by_name("data/data").parameters == {
            "config": load_named_config(data["parameters"]["config"])
        }


def test_the_server_refuses_an_unknown_key_in_a_stage_section(local_prefect, deployed):
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.states import Scheduled

    dep = pipeline_deployment(local_prefect)
    later = Scheduled(scheduled_time=dt.datetime.now(dt.UTC) + dt.timedelta(days=30))  # never picked up here
    bad = {"config": {"stages": {"tokenizer": {"config": "configs/tokenizer-demo.yaml", "vocabsize": 300}}}}
    with api_client(local_prefect) as client:
        with pytest.raises(PrefectHTTPStatusError) as e:
            client.create_flow_run_from_deployment(dep.id, parameters=bad, state=later)
        assert "vocabsize" in e.value.response.text
        good = {"config": {"stages": {"tokenizer": {"config": "configs/tokenizer-demo.yaml", "vocab_size": 300}}}}
        run = client.create_flow_run_from_deployment(dep.id, parameters=good, state=later)
        client.delete_flow_run(run.id)
