"""The `lmpipe` CLI's config building: YAML + --set overrides, validated by the flow's model."""

import pytest
from pydantic import BaseModel, Field, ValidationError

from flows.cli import FLOWS, build_config, config_model, load_flow


class Inner(BaseModel):
    steps: int = Field(10, description="steps")
    lr: float = Field(0.1, description="lr")


class Outer(BaseModel):
    name: str = Field("x", description="name")
    inner: Inner = Field(default_factory=lambda: Inner(steps=99), description="section with its own defaults")


def test_set_keeps_the_parent_default_of_a_section():
    cfg = build_config(Outer, None, ["inner.lr=0.5"])
    assert cfg.inner.steps == 99 and cfg.inner.lr == 0.5


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: y\ninner:\n  steps: 3\n")
    cfg = build_config(Outer, str(f), ["inner.lr=2", "name=z"])
    assert (cfg.name, cfg.inner.steps, cfg.inner.lr) == ("z", 3, 2.0)


def test_bad_values_name_the_field(tmp_path):
    with pytest.raises(ValidationError, match="inner.steps"):
        build_config(Outer, None, ["inner.steps=many"])
    with pytest.raises(SystemExit, match="key=value"):
        build_config(Outer, None, ["inner.steps"])
    with pytest.raises(SystemExit, match="does not exist"):
        build_config(Outer, str(tmp_path / "missing.yaml"), [])


def test_every_registered_flow_has_a_pydantic_config():
    for name in FLOWS:
        model = config_model(load_flow(name))
        assert issubclass(model, BaseModel), name
        undocumented = [k for k, f in model.model_fields.items() if not f.description]
        assert not undocumented, f"{name}: fields without a description: {undocumented}"


def _descriptions(model, seen=None):
    seen = set() if seen is None else seen
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        yield f"{model.__name__}.{name}", field.description or ""
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                yield from _descriptions(cand, seen)


def test_descriptions_render_in_the_ui_form():
    """The UI renders descriptions as markdown: a bare <name> would vanish as an HTML tag."""
    import re

    bad = []
    for flow in FLOWS:
        for where, text in _descriptions(config_model(load_flow(flow))):
            if re.search(r"<[A-Za-z|]", re.sub(r"`[^`]*`", "", text)):
                bad.append(f"{flow}: {where}: {text}")
    assert not bad, "\n".join(bad)
