"""The `lmpipe` CLI's config building: YAML + --set overrides, validated by the flow's model."""

import os
import subprocess
import sys
from pathlib import Path

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


# --------------------------------------------------------------------------- the real command

REPO = Path(__file__).resolve().parents[2]


def lmpipe(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """``lmpipe …`` as a user runs it (the console script's module), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        timeout=timeout,
    )


def test_lmpipe_alone_prints_help():
    r = lmpipe()
    assert r.returncode == 0 and r.stdout.startswith("usage: lmpipe")
    for command in ("run", "ls", "inspect", "compare", "demo", "server", "deploy"):
        assert f"\n    {command} " in r.stdout, command


def test_a_config_error_is_one_line_naming_the_key_value_and_nearest_key():
    r = lmpipe("run", "tokenizer", "--config", "configs/tokenizer-demo.yaml", "--set", "vocabsize=300")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        r.stderr.strip() == "lmpipe: configs/tokenizer-demo.yaml: vocabsize=300: unknown key; did you mean vocab_size?"
    )
    r = lmpipe("run", "tokenizer", "--set", "input=x", "--set", "vocab_size=12")
    assert (
        r.returncode == 2
        and r.stderr.strip() == "lmpipe: tokenizer config: vocab_size=12: Input should be greater than or equal to 257"
    )
    r = lmpipe("run", "tokenizr")
    assert r.returncode != 0 and "did you mean 'tokenizer'" in r.stderr


def test_a_missing_source_fails_before_a_server_starts(tmp_path):
    missing = tmp_path / "crawl" / "*.warc.gz"
    r = lmpipe("run", "data", "--set", f'sources=["{missing}"]', "--set", f"root={tmp_path / 'out'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"lmpipe: data config: source glob '{missing}' matches no file"
    assert "temporary server" not in (r.stdout + r.stderr).lower()  # failed before Prefect started one
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def rules_outputs(reference, tmp_path_factory):
    """Two real outputs of one filter stage (different thresholds) under a root."""
    from tests.lm.test_catalog import pages, word_rule_stage

    root = tmp_path_factory.mktemp("root")
    docs = pages(reference)
    older = word_rule_stage(root, docs, 150)
    os.utime(older, (os.path.getmtime(older) - 100,) * 2)
    return root, older, word_rule_stage(root, docs, 282)


def test_ls_inspect_and_compare_through_the_command(rules_outputs):
    root, older, newer = rules_outputs
    fp_old, fp_new = Path(older).parent.name, Path(newer).parent.name
    r = lmpipe("ls", "--root", str(root))
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[:3] == ["rules", "2", fp_new]
    r = lmpipe("inspect", str(root / "rules"))  # a stage folder: its fingerprints
    assert (
        r.returncode == 0
        and f"latest = {fp_new}" in r.stdout
        and f"config {fp_old} -> {fp_new}:\n  min_words: 150 -> 282" in r.stdout
    )
    assert lmpipe("ls", "rules", "--root", str(root)).stdout.splitlines()[0] == r.stdout.splitlines()[0]
    r = lmpipe("inspect", "rules@latest", "--root", str(root), "--samples", "1")
    assert r.returncode == 0 and f"fingerprint {fp_new}" in r.stdout and "sample 1:" in r.stdout
    r = lmpipe("compare", str(Path(older).parent), "rules@latest", "--root", str(root))
    assert r.returncode == 0 and "min_words  150" in r.stdout and "rejected: too_few_words" in r.stdout, r.stdout
    r = lmpipe("inspect", "tokenizer@latest", "--root", str(root))
    assert r.returncode == 2 and "has not run under this root" in r.stderr and "Traceback" not in r.stderr


def test_telemetry_is_off_in_the_command_even_when_the_shell_does_not_say_so(tmp_path):
    """An offline machine: Prefect's temporary server must not try to send usage reports
    ("ERROR … Failed to send telemetry"). What Prefect's settings say before and after
    ``lmpipe`` started, in a shell that sets neither variable."""
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    code = (
        "import sys; from prefect.settings import Settings; print(Settings().server.analytics_enabled); "
        "from flows.cli import main; main(['ls', '--root', sys.argv[1]]); print(Settings().server.analytics_enabled)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and (lines[0], lines[-1]) == ("True", "False"), r.stdout + r.stderr


def test_compare_flow_publishes_the_comparison(prefect_harness, rules_outputs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.compare import CompareConfig, compare_flow

    root, older, newer = rules_outputs
    out = compare_flow(CompareConfig(a=older, b="rules@latest", root=str(root)))
    assert out == {"rules": {"a": Path(older).parent.name, "b": Path(newer).parent.name, "config_changes": 1}}
    with get_client(sync_client=True) as client:
        [art] = client.read_artifacts(
            limit=1,
            sort=ArtifactSort.CREATED_DESC,
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["compare-rules"])),
        )
    assert "## config" in art.data and "| min_words | 150 | 282 |" in art.data
    assert "rejected: too_few_words" in art.data
