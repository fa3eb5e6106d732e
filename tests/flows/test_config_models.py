"""Every flow's parameter model (the Prefect UI form): one Config base that refuses unknown
keys with "did you mean", bounds on every count and list, no free-form dicts, and a
description on every field of the JSON schema the UI renders."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

import annotated_types as at
import pytest
from pydantic import BaseModel, ValidationError

from flows.cli import build_config
from flows.registry import FLOWS, config_model, load_flow
from lm.config import Config, format_validation_error

# Bounds another helper sets in this session (#17.12: slice_bytes ≥ 1 MiB and its ceiling).
BOUNDS_SET_ELSEWHERE = {"ExtractConfig.slice_bytes"}


def _args(ann: Any) -> list:
    """The types inside ``ann`` (through Optional/Union and Annotated), ``ann`` included."""
    out, todo = [], [ann]
    while todo:
        a = todo.pop()
        out.append(a)
        if typing.get_origin(a) in (Union, types.UnionType, Annotated):
            todo += list(typing.get_args(a))
    return out


def _flat(meta) -> list:
    """Constraints, with those of a ``Field(...)`` inside ``Annotated`` taken out."""
    return [
        c for m in meta for c in ([m, *m.metadata] if hasattr(m, "metadata") and isinstance(m.metadata, list) else [m])
    ]


def _metadata(field) -> list:
    meta = list(field.metadata)
    for a in _args(field.annotation):
        meta += list(getattr(a, "__metadata__", ()))
    return _flat(meta)


def models(model: type[BaseModel], seen: set | None = None):
    """``model`` and every model reachable from its fields (lists of models too)."""
    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    yield model
    for field in model.model_fields.values():
        for a in _args(field.annotation):
            for c in (a, *typing.get_args(a)):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    yield from models(c, seen)


ALL = sorted(
    {m for name in FLOWS for m in models(config_model(load_flow(name)))}, key=lambda m: (m.__module__, m.__name__)
)


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.__name__)
def test_every_config_model_refuses_an_unknown_key_naming_the_nearest(model):
    assert issubclass(model, Config), f"{model.__module__}.{model.__name__} must derive from lm.config.Config"
    field = next(iter(model.model_fields))
    typo = field.replace("_", "") if "_" in field else field + "x"
    with pytest.raises(ValidationError) as e:
        model.model_validate({typo: 1})
    [err] = [err for err in e.value.errors() if err["type"] == "unknown_key"]  # (required fields: missing too)
    assert err["loc"] == (typo,) and f"did you mean {field!r}" in err["msg"], err


@pytest.mark.parametrize("model", ALL, ids=lambda m: m.__name__)
def test_counts_and_lists_are_bounded_and_no_free_form_dicts(model):
    for name, field in model.model_fields.items():
        where = f"{model.__name__.removesuffix('Overrides')}.{name}"
        types_ = _args(field.annotation)
        assert not any(t is Any or t is dict or typing.get_origin(t) is dict for t in types_), (
            f"{where}: free-form dict/Any"
        )
        meta = _metadata(field)
        if int in types_ and where not in BOUNDS_SET_ELSEWHERE:
            assert any(isinstance(m, (at.Ge, at.Gt)) for m in meta) and any(
                isinstance(m, (at.Le, at.Lt)) for m in meta
            ), f"{where}: an int needs a lower and an upper bound"
        lists = [t for t in types_ if typing.get_origin(t) in (list, tuple, set)]
        if lists:
            assert any(isinstance(m, at.MaxLen) for m in meta), f"{where}: a list needs max_length"
            for item in (i for t in lists for i in _args(typing.get_args(t)[0])):
                if item is int:  # list[int]: each item bounded too
                    item_meta = _flat(
                        [m for t in lists for a in _args(typing.get_args(t)[0]) for m in getattr(a, "__metadata__", ())]
                    )
                    assert any(isinstance(m, (at.Le, at.Lt)) for m in item_meta), (
                        f"{where}: list items need an upper bound"
                    )


# The flows that silently ignored a misspelt key before (#17.6), each with a real near miss.
TYPOS = {
    "tokenizer": ("vocabsize=300", "vocab_size"),
    "tokenize": ("valfraction=0.1", "val_fraction"),
    "filters": ("filters.minhash.num_hash=64", "filters.minhash.num_hashes"),
    "sft": ("sft.numsteps=3", "sft.num_steps"),
    "dpo": ("dpo.Beta=0.2", "dpo.beta"),
    "grpo": ("grpo.group_sise=4", "grpo.group_size"),
    "evaluate": ("eval.max_new_token=3", "eval.max_new_tokens"),
    "train-quality-classifier": ("hold_out=0.3", "holdout"),
    "align-demo": ("options.verifer=arithmetic", "options.verifier"),
    "pipeline": ("stages.tokenizer.vocabsize=300", "stages.tokenizer.vocab_size"),
}


@pytest.mark.parametrize("flow", sorted(TYPOS))
def test_a_misspelt_set_fails_naming_the_right_key(flow):
    typo, right = TYPOS[flow]
    with pytest.raises(ValidationError) as e:
        build_config(config_model(load_flow(flow)), None, ["root=outputs", typo] if flow != "filters" else [typo])
    msg = format_validation_error(e.value)
    assert f"did you mean {right}?" in msg, msg


def _schema_objects(schema: dict):
    """The models of the form (the parameter itself, `config`, is the flow's one argument)."""
    yield from schema.get("definitions", {}).items()


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_the_ui_form_has_a_description_on_every_field(flow):
    """What Prefect sends to the server for the Run form (and validates runs against)."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(load_flow(flow).fn).model_dump_for_openapi()
    assert list(schema["properties"]) == ["config"]
    missing, open_ = [], []
    for name, d in _schema_objects(schema):
        missing += [f"{name}.{p}" for p, v in d.get("properties", {}).items() if not v.get("description")]
        if d.get("type") == "object" and "properties" in d and d.get("additionalProperties") is not False:
            open_.append(name)
    assert not missing, f"{flow}: fields without a description: {missing}"
    assert not open_, f"{flow}: forms that accept unknown keys: {open_}"
