"""lm.config: the Config base (unknown keys refused with the nearest valid key), short error
messages, partial models (named config + overrides) and stage@latest references."""

from __future__ import annotations

import os

import pytest
from pydantic import Field, ValidationError

from lm.config import (
    Config,
    StageRef,
    apply_overrides,
    build_config,
    deep_merge,
    did_you_mean,
    format_validation_error,
    partial_model,
    partial_overrides,
)
from lm.data.shards import Stage


class Inner(Config):
    vocab_size: int = Field(10, ge=1, le=1000, description="v")
    lr: float = Field(0.1, description="lr")


class Outer(Config):
    name: str = Field("x", description="name")
    inner: Inner = Field(default_factory=lambda: Inner(vocab_size=99), description="section")
    maybe: Inner | None = Field(None, description="optional section")
    note: str | None = Field("n", description="nullable")


class Refs(Config):
    input: StageRef = Field(description="a stage output")
    other: StageRef | None = Field(None, description="another")
    root: str = Field("outputs", description="root")


def test_did_you_mean_ignores_case_and_separators():
    assert did_you_mean("vocabsize", ["vocab_size", "lr"]) == "vocab_size"
    assert did_you_mean("Vocab-Size", ["vocab_size"]) == "vocab_size"
    assert did_you_mean("vocab_sise", ["vocab_size", "seed"]) == "vocab_size"
    assert did_you_mean("zzz", ["vocab_size", "seed"]) is None


def test_unknown_keys_are_refused_at_every_level_naming_the_nearest():
    with pytest.raises(ValidationError) as e:
        Outer.model_validate({"inner": {"vocabsize": 300}})
    err = e.value.errors()[0]
    assert err["type"] == "unknown_key" and err["loc"] == ("inner", "vocabsize") and err["input"] == 300
    assert "'vocabsize'" in err["msg"] and "did you mean 'vocab_size'?" in err["msg"]
    assert (
        format_validation_error(e.value, "c.yaml")
        == "c.yaml: inner.vocabsize=300: unknown key; did you mean inner.vocab_size?"
    )
    with pytest.raises(ValidationError, match="unknown key 'nmae'"):
        Outer.model_validate({"nmae": "y"})
    # the JSON schema says so too (the Prefect server refuses unknown keys before a run exists)
    assert Outer.model_json_schema()["additionalProperties"] is False


def test_errors_are_one_short_line_each_with_the_value():
    with pytest.raises(ValidationError) as e:
        build_config(Outer, None, ["inner.vocab_size=many", "name=[1]"])
    lines = format_validation_error(e.value, "config").splitlines()
    assert lines == [
        "config: name=[1]: Input should be a valid string",
        "config: inner.vocab_size='many': Input should be a valid integer, unable to parse string as an integer",
    ]
    with pytest.raises(ValidationError) as e:
        build_config(Outer, None, ["inner.vocab_size=5000"])
    assert (
        format_validation_error(e.value) == "config: inner.vocab_size=5000: Input should be less than or equal to 1000"
    )


def test_a_credential_in_a_url_is_not_echoed():
    class Root(Config):
        root: int = Field(0, description="r")

    with pytest.raises(ValidationError) as e:
        Root.model_validate({"root": "s3://key:secret@bucket/x"})
    assert "secret" not in format_validation_error(e.value) and "s3://***@bucket" in format_validation_error(e.value)


def test_set_on_a_missing_section_starts_from_the_sections_default():
    assert build_config(Outer, None, ["inner.lr=0.5"]).inner.vocab_size == 99
    assert apply_overrides({}, ["inner.lr=0.5"], Outer) == {"inner": {"vocab_size": 99, "lr": 0.5}}


def test_deep_merge():
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"c": 3}, "d": [2]}) == {"a": {"b": 1, "c": 3}, "d": [2]}


def test_partial_model_overrides_only_what_was_set():
    P = partial_model(Outer)
    assert partial_model(Outer) is P
    schema = P.model_json_schema()
    assert not schema.get("required") and schema["additionalProperties"] is False
    assert all(p.get("description") for p in schema["properties"].values())
    p = P.model_validate({"inner": {"lr": 0.5}, "note": None})
    assert partial_overrides(p) == {"inner": {"lr": 0.5}, "note": None}  # note may be null: an explicit override
    # A form that sends every empty field as null: nulls in non-nullable fields are "not set".
    p = P.model_validate({"name": None, "inner": {"vocab_size": None, "lr": 0.5}, "maybe": None})
    assert partial_overrides(p) == {"inner": {"lr": 0.5}, "maybe": None}
    with pytest.raises(ValidationError, match="did you mean 'vocab_size'"):
        P.model_validate({"inner": {"vocabsize": 1}})
    with pytest.raises(ValidationError, match="less than or equal to 1000"):  # bounds kept
        P.model_validate({"inner": {"vocab_size": 5000}})


def _stage(root, name: str, value: int):
    stage = Stage(root, name, version="1", config={"value": value})
    return stage, stage.commit(0)


def test_stage_latest_is_the_newest_finished_output(tmp_path):
    _, old = _stage(tmp_path, "minhash", 1)
    new_stage, new = _stage(tmp_path, "minhash", 2)
    # Commit times have one-second resolution; within one second the manifest's mtime decides.
    os.utime(old, (old.stat().st_mtime - 100, old.stat().st_mtime - 100))
    (tmp_path / "minhash" / "incomplete-fp").mkdir()  # a run in progress is never "latest"
    cfg = Refs.model_validate({"input": "minhash@latest", "root": str(tmp_path)})
    assert cfg.input == str(new)
    assert Refs(input=f"{tmp_path}/minhash/latest", root="elsewhere").input == str(new)
    assert Refs(input=f"{tmp_path}/minhash@latest", other="minhash@latest", root=str(tmp_path)).other == str(new)
    assert Refs(input="a/path", root=str(tmp_path)).input == "a/path"  # anything else is left as it is
    with pytest.raises(ValidationError) as e:
        Refs(input="tokenizer@latest", root=str(tmp_path))
    msg = format_validation_error(e.value)
    assert "input='tokenizer@latest'" in msg and "has not run under this root" in msg
