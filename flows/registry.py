"""Every flow ``lmpipe`` can run, by name, and the named configs in ``configs/``.

A flow takes one argument, ``config``, a pydantic model (the same model is the Prefect UI
form). Flow modules are imported by name when asked for, so this module imports none of
them: the CLI, the pipeline and the demo all read the registry, and nothing here reads them.

Named configs (``configs/*.yaml``) are the one source of each stage's settings: a
deployment's ``parameters`` and a pipeline stage section name the file
(``config: configs/sft-demo.yaml``); ``lmpipe deploy`` and the pipeline read it (see
``load_named_config`` and ``expand_parameters``).
"""

from __future__ import annotations

import contextlib
import importlib
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lm.config import Config, did_you_mean, load_yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# name -> "module:function"
FLOWS: dict[str, str] = {
    "data": "flows.data:data_flow",
    "filters": "flows.funnel:filters_flow",
    "train-quality-classifier": "flows.classifiers:train_classifier_flow",
    "tokenizer": "flows.tokenizer:tokenizer_flow",
    "tokenize": "flows.tokenize:tokenize_flow",
    "pretrain": "flows.pretrain:pretrain_flow",
    "scaling": "flows.scaling:scaling_flow",
    "sft": "flows.sft:sft_flow",
    "dpo": "flows.dpo:dpo_flow",
    "grpo": "flows.grpo:grpo_flow",
    "evaluate": "flows.evaluate:evaluate_flow",
    "align-demo": "flows.align_demo:align_demo_flow",
    "compare": "flows.compare:compare_flow",
    "pipeline": "flows.pipeline:pipeline_flow",
}


def load_flow(name: str):
    if name not in FLOWS:
        hint = did_you_mean(name, FLOWS)
        hint = f" (did you mean {hint!r}?)" if hint else ""
        raise SystemExit(f"unknown flow {name!r}{hint}; choose one of: {', '.join(sorted(FLOWS))}")
    module, func = FLOWS[name].split(":")
    return getattr(importlib.import_module(module), func)


def config_model(flow_or_name) -> type[Config]:
    """The pydantic model of a flow's ``config`` parameter (a flow object or a registered name)."""
    flow = load_flow(flow_or_name) if isinstance(flow_or_name, str) else flow_or_name
    fn = getattr(flow, "fn", flow)
    # string annotations (from __future__ import annotations) resolved without eval()
    return typing.get_type_hints(fn)["config"]


def named_config_path(path: str | Path) -> Path:
    """A named config file: as given (relative to the working directory), else under the
    checkout (``configs/x.yaml`` works from any directory, and on a worker)."""
    p = Path(path).expanduser()
    if p.suffix not in {".yaml", ".yml"}:
        raise ValueError(f"named config {str(path)!r} must be a .yaml file (see configs/)")
    if p.is_file() or p.is_absolute():
        return p
    if (REPO / p).is_file():
        return REPO / p
    choices = ", ".join(f"configs/{c.name}" for c in sorted(CONFIGS.glob("*.yaml")))
    raise FileNotFoundError(f"named config {str(path)!r} does not exist; the checkout has: {choices}")


def load_named_config(path: str | Path) -> dict:
    return load_yaml(named_config_path(path))


def expand_parameters(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """Deployment parameters with ``config: configs/x.yaml`` replaced by that file's contents."""
    params = dict(parameters or {})
    if isinstance(params.get("config"), str):
        params["config"] = load_named_config(params["config"])
    return params


def expand_prefect_yaml(doc: dict) -> dict:
    """A prefect.yaml document whose deployments' (and schedules') parameters name files,
    with those files read in: what ``lmpipe deploy`` registers."""
    out = dict(doc)
    deployments = []
    for d in doc.get("deployments", []):
        d = {**d, "parameters": expand_parameters(d.get("parameters"))}
        if d.get("schedules"):
            d["schedules"] = [
                {**s, "parameters": expand_parameters(s.get("parameters"))} if "parameters" in s else s
                for s in d["schedules"]
            ]
        deployments.append(d)
    out["deployments"] = deployments
    return out


@contextlib.contextmanager
def expanded_prefect_file(prefect_file: str | Path) -> Iterator[Path]:
    """A temporary copy of ``prefect_file`` with the named configs read in (``expand_prefect_yaml``)."""
    doc = yaml.safe_load(Path(prefect_file).read_text())
    with tempfile.TemporaryDirectory(prefix="lmpipe-deploy-") as tmp:
        out = Path(tmp) / "prefect.yaml"
        out.write_text(yaml.safe_dump(expand_prefect_yaml(doc), sort_keys=False, width=120))
        yield out
