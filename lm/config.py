"""Configs from YAML plus ``key=value`` overrides, validated by a pydantic model.

One implementation for every entry point: the ``lmpipe`` CLI (flows) and
``python -m lm.train`` (no Prefect). Override values are parsed as YAML; dotted keys reach
nested fields, and a section absent from the file starts from the model's default for it
(so ``--set sft.seed=1`` keeps the flow's own ``sft`` defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of field: value")
    return data


def _field_default(model: type | None, key: str) -> Any:
    """The default of ``model.key`` as plain data, or {} when there is none to start from."""
    field = getattr(model, "model_fields", {}).get(key)
    if field is None:
        return {}
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined or value is None:
        return {}
    return value.model_dump() if isinstance(value, BaseModel) else value


def _field_model(model: type | None, key: str) -> type | None:
    field = getattr(model, "model_fields", {}).get(key)
    ann = getattr(field, "annotation", None)
    for cand in (ann, *getattr(ann, "__args__", ())):  # X or Optional[X]
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def set_path(d: dict, dotted: str, value: Any, model: type | None = None) -> None:
    """Set ``a.b.c = value`` in ``d``; a missing section starts from ``model``'s default for it."""
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = _field_default(model, k) if k not in d else {}
            if not isinstance(d[k], dict):
                d[k] = {}
        d, model = d[k], _field_model(model, k)
    d[keys[-1]] = value


def apply_overrides(data: dict, overrides: list[str], model: type | None = None) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, raw = item.split("=", 1)
        set_path(data, key.strip(), yaml.safe_load(raw), model)
    return data


def build_config(model: type[BaseModel], path: str | None, overrides: list[str]) -> BaseModel:
    """Load YAML (if any), apply overrides, validate (a bad value names its field)."""
    data = load_yaml(path) if path else {}
    return model.model_validate(apply_overrides(data, overrides, model))
