"""Config models and configs from YAML plus ``key=value`` overrides.

``Config`` is the base class of every config model (flow parameters, stage settings): it
refuses unknown keys, naming the nearest valid one (``vocabsize`` → "did you mean
'vocab_size'?"), so a misspelt setting never runs silently with its default.

One loader for every entry point: the ``lmpipe`` CLI (flows) and ``python -m lm.train``
(no Prefect). Override values are parsed as YAML; dotted keys reach nested fields, and a
section absent from the file starts from the model's default for it (so ``--set
sft.seed=1`` keeps the flow's own ``sft`` defaults).

A field typed ``StageRef`` names a stage output: a manifest, a stage directory, or
``stage@latest`` / ``<root>/<stage>/latest`` — the newest finished output of that stage
under the config's ``root`` (see lm/catalog.py), resolved when the config is validated.
"""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, PydanticUndefined

from lm.catalog import is_latest_ref, resolve_latest


def did_you_mean(key: str, choices: Iterable[str]) -> str | None:
    """The valid key closest to ``key`` (ignoring case, ``_`` and ``-``), or None."""
    choices = list(choices)

    def norm(s: str) -> str:
        return re.sub(r"[_\-\s]", "", s.lower())

    by_norm = {norm(c): c for c in choices}
    if norm(key) in by_norm:
        return by_norm[norm(key)]
    close = difflib.get_close_matches(norm(key), list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


class StageRefMarker:
    """Metadata of a ``StageRef`` field: ``stage@latest`` in it is resolved against ``root``."""


# A manifest path, a stage directory, or `stage@latest` (resolved on validation).
StageRef = Annotated[str, StageRefMarker()]


def _is_stage_ref(field) -> bool:
    """A ``StageRef`` or ``StageRef | None`` field."""
    metadata = list(field.metadata)
    for arg in typing.get_args(field.annotation):  # Optional[Annotated[str, marker]]
        metadata += list(getattr(arg, "__metadata__", ()))
    return any(isinstance(m, StageRefMarker) for m in metadata)


class Config(BaseModel):
    """Base of every config model: unknown keys are refused with the nearest valid key."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _unknown_keys(cls, data: Any, handler):
        """extra="forbid"'s errors, each named ``unknown_key`` with the nearest valid key
        (nested models have named theirs already: pydantic keeps the errors they raise)."""
        try:
            return handler(data)
        except ValidationError as e:
            errors = e.errors(include_url=False)
            if not any(err["type"] == "extra_forbidden" and len(err["loc"]) == 1 for err in errors):
                raise
            hide = bool(cls.model_config.get("hide_input_in_errors"))  # e.g. a root URL that embeds credentials
            raise ValidationError.from_exception_data(
                cls.__name__, [_renamed(cls, e) for e in errors], hide_input=hide
            ) from None

    @model_validator(mode="after")
    def _resolve_stage_refs(self):
        root = getattr(self, "root", None)
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if _is_stage_ref(field) and isinstance(value, str) and is_latest_ref(value):
                try:
                    object.__setattr__(self, name, resolve_latest(value, root if isinstance(root, str) else "outputs"))
                except FileNotFoundError as e:  # a ValueError: pydantic reports it as this model's error
                    raise ValueError(f"{name}={value!r}: {e}") from e
        return self

    def check_inputs(self) -> None:
        """Cheap local checks that a run's inputs exist (no network), run by ``lmpipe run``
        before a Prefect server starts. Raises FileNotFoundError/ValueError naming the input.
        Sub-configs are checked too; a model with inputs of its own extends this."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Config):
                value.check_inputs()


_PARTIALS: dict[type, type] = {}


def _partial_annotation(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return partial_model(ann)
    if typing.get_origin(ann) is Annotated:  # a stage@latest is resolved once merged, not in the overrides
        base, *meta = typing.get_args(ann)
        meta = [m for m in meta if not isinstance(m, StageRefMarker)]
        return Annotated[(_partial_annotation(base), *meta)] if meta else _partial_annotation(base)
    if typing.get_origin(ann) in (Union, types.UnionType):
        return Union[tuple(_partial_annotation(a) for a in typing.get_args(ann))]  # noqa: UP007 (built at runtime)
    return ann


def _allows_none(ann: Any) -> bool:
    return (
        ann is None
        or ann is type(None)
        or (typing.get_origin(ann) in (Union, types.UnionType) and type(None) in typing.get_args(ann))
    )


def partial_model(model: type[BaseModel], name: str | None = None, **extra_fields: Any) -> type[Config]:
    """``model`` with every field optional and its sub-models partial too: overrides a person
    fills in on top of a named config (``partial_overrides`` reads them back). Descriptions
    and bounds are kept, unknown keys refused; the model's validators are not (the merged
    config is validated by ``model`` itself). ``extra_fields``: more ``name=(type, Field)``."""
    if model in _PARTIALS and name is None and not extra_fields:
        return _PARTIALS[model]
    fields: dict[str, Any] = {}
    for fname, f in model.model_fields.items():
        ann = _partial_annotation(f.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):  # a section: a nested form, empty = nothing set
            fields[fname] = (ann, Field(default_factory=ann, description=f.description))
            continue
        meta = [m for m in f.metadata if not isinstance(m, StageRefMarker)]  # resolved once merged
        if meta:
            ann = Annotated[(ann, *meta)]
        fields[fname] = (Optional[ann], Field(None, description=f.description))  # noqa: UP045 (ann: any annotation)
    doc = f"Overrides of {model.__name__}: {(model.__doc__ or '').strip().splitlines()[0] if model.__doc__ else ''}"
    out = create_model(name or f"{model.__name__}Overrides", __base__=Config, __doc__=doc, **extra_fields, **fields)
    out.__nullable__ = frozenset(n for n, f in model.model_fields.items() if _allows_none(f.annotation))
    if name is None and not extra_fields:
        _PARTIALS[model] = out
    return out


def partial_overrides(section: BaseModel, exclude: Iterable[str] = ()) -> dict:
    """The fields a person set in a ``partial_model`` instance, as plain data. A null in a
    field that cannot be null (a form sending empty fields as null) counts as not set."""
    nullable = getattr(type(section), "__nullable__", frozenset())
    out: dict[str, Any] = {}
    for name in section.model_fields_set - set(exclude):
        value = getattr(section, name)
        if isinstance(value, BaseModel) and hasattr(type(value), "__nullable__"):
            if sub := partial_overrides(value):
                out[name] = sub
        elif value is not None or name in nullable:
            out[name] = (
                json.loads(json.dumps(value, default=_plain))
                if not isinstance(value, BaseModel)
                else value.model_dump(mode="json")
            )
    return out


def _plain(v: Any) -> Any:
    return v.model_dump(mode="json") if isinstance(v, BaseModel) else str(v)


# --------------------------------------------------------------------------- errors


def _renamed(model: type[BaseModel], err: dict) -> InitErrorDetails:
    """One error of ``model``'s validation as it goes on: an unknown key of this model gets
    its "did you mean", every other error passes unchanged (type, message, context)."""
    ctx = {k: str(v) for k, v in (err.get("ctx") or {}).items()}
    if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
        key = str(err["loc"][0])
        hint = did_you_mean(key, model.model_fields) or ""
        kind = PydanticCustomError(
            "unknown_key",
            "unknown key '{key}'" + ("; did you mean '{hint}'?" if hint else "; {model} takes: {valid}"),
            {"key": key, "hint": hint, "model": model.__name__, "valid": ", ".join(model.model_fields)},
        )
    else:
        kind = PydanticCustomError(err["type"], "{msg}", {**ctx, "msg": err["msg"]})
    return InitErrorDetails(type=kind, loc=tuple(err["loc"]), input=err.get("input"))


def _redact(value: Any) -> str:
    text = repr(value)
    text = re.sub(r"(://)[^/@\s]*@", r"\1***@", text)  # credentials in a URL
    return text if len(text) <= 80 else text[:77] + "..."


def format_validation_error(e: ValidationError, where: str = "config") -> str:
    """A ValidationError as short lines: ``where: key=value: problem`` (no traceback)."""
    lines = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "unknown_key":
            ctx = err.get("ctx", {})
            parent = ".".join(str(p) for p in err["loc"][:-1])
            hint = (
                f"; did you mean {parent + '.' if parent else ''}{ctx['hint']}?"
                if ctx.get("hint")
                else f"; valid keys: {ctx['valid']}"
            )
            lines.append(f"{where}: {loc}={_redact(err.get('input'))}: unknown key{hint}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{where}: {loc}={_redact(err.get('input'))}: unknown key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if not loc:  # a check across fields: its message names them
                lines.append(f"{where}: {msg}")
                continue
            shown = (
                ""
                if err["type"] == "missing" or isinstance(err.get("input"), dict)
                else f"={_redact(err.get('input'))}"
            )
            if err["type"] == "literal_error" and isinstance(err.get("input"), str):
                hint = did_you_mean(err["input"], re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", ""))))
                msg += f"; did you mean {hint!r}?" if hint else ""
            lines.append(f"{where}: {loc}{shown}: {msg}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- loading


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
    # Only what the default sets: the rest takes the section model's own defaults anyway.
    return value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value


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


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(model: type[BaseModel], path: str | None, overrides: list[str]) -> BaseModel:
    """Load YAML (if any), apply overrides, validate (a bad value names its field)."""
    data = load_yaml(path) if path else {}
    return model.model_validate(apply_overrides(data, overrides, model))
