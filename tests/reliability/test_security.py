"""Security: nothing the pipeline reads can execute code, nothing escapes the artifact root,
the server listens on loopback, credentials never reach manifests.

* An AST scan of lm/, tasks/, flows/ fails on unpickling (pickle/cloudpickle/dill/joblib/
  marshal/shelve), ``torch.load`` without ``weights_only=True``, ``np.load(allow_pickle=True)``,
  ``yaml.load`` without a safe loader, ``eval``/``exec``, a shell (``shell=True``,
  ``os.system``, ``os.popen``), and ``Model.from_pretrained`` without ``use_safetensors=True``.
  Prefect results: ``<state>.result()`` (it deserializes with whatever serializer the stored
  record names: cloudpickle by default), ``persist_result=True`` or a ``result_serializer``
  other than ``"json"``, and ``PREFECT_RESULTS_DEFAULT_SERIALIZER`` set to anything but json.
  A line may be allowed only with a ``# security-ok: <reason>`` comment on it or just above.
* Weights only as safetensors: a pickle checkpoint in a checkpoint directory is refused with
  a clear error and never unpickled (a booby-trapped pickle would create a file).
* Model and tokenizer files come only from configured paths.
* Stage names and name-like flow parameters cannot leave the root; a symlink in the stage
  tree that points outside is refused; a symlink planted as a shard is replaced, not followed.
* ``lmpipe server`` binds 127.0.0.1, requires its auth string, refuses run-chosen commands:
  tests/e2e/test_server_security.py (against the e2e session's real server; ``_listening``
  below reads the real listening sockets).
* A source URL with credentials is refused before any work, without echoing the secret.
"""

from __future__ import annotations

import ast
import os
import pickle
import socket
from pathlib import Path

import pyarrow as pa
import pytest

from lm.data.shards import Stage, validate_name

REPO = Path(__file__).resolve().parents[2]
SCANNED = ["lm", "tasks", "flows"]
UNPICKLERS = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve", "jsonpickle"}
SHELL_FUNCS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}
SUBPROCESS = {"run", "Popen", "call", "check_call", "check_output"}


# --------------------------------------------------------------------------- the AST scan


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _is_const_str(node, value: str) -> bool:
    return isinstance(node, ast.Constant) and node.value == value


def _serializer_settings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that set Prefect's default result serializer to something but json:
    ``{"PREFECT_RESULTS_DEFAULT_SERIALIZER": "pickle"}`` or ``env[...] = "pickle"``."""
    found = []
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, ast.Dict):
            pairs = list(zip(node.keys, node.values))
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            pairs = [(node.targets[0].slice, node.value)]
        for k, v in pairs:
            if _is_const_str(k, "PREFECT_RESULTS_DEFAULT_SERIALIZER") and not _is_const_str(v, "json"):
                found.append(
                    (node.lineno, 'PREFECT_RESULTS_DEFAULT_SERIALIZER must be "json" (anything else persists pickles)')
                )
    return found


def unsafe_calls(source: str, filename: str = "<src>") -> list[tuple[int, str]]:
    """(line, why) for every unsafe call in ``source`` not allowed by a ``# security-ok:`` comment."""
    lines = source.splitlines()
    tree = ast.parse(source, filename)
    found = [(line, why) for line, why in _serializer_settings(tree) if not _allowed(lines, line)]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, attr = name.rpartition(".")
        why = None
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
            why = f"{node.func.id}() runs arbitrary code"
        elif head.split(".")[-1] in UNPICKLERS and attr in ("load", "loads", "Unpickler", "open"):
            why = f"{name}: unpickling can run code"
        elif name in ("pickle.Unpickler",):
            why = "pickle.Unpickler can run code"
        elif name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
            why = "torch.load without weights_only=True unpickles"
        elif (
            name in ("np.load", "numpy.load")
            and not _is_const(_kw(node, "allow_pickle"), False)
            and _kw(node, "allow_pickle") is not None
        ):
            why = "np.load(allow_pickle=...) unpickles object arrays"
        elif name in (
            "yaml.unsafe_load",
            "yaml.full_load",
            "yaml.load_all",
            "yaml.full_load_all",
            "yaml.unsafe_load_all",
        ):
            why = f"{name} can construct arbitrary objects"
        elif name == "yaml.load":
            loader = _dotted(_kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else ast.Constant(None)))
            if loader.rpartition(".")[2] not in ("SafeLoader", "CSafeLoader"):
                why = "yaml.load without Loader=yaml.SafeLoader"
        elif (head, attr) in SHELL_FUNCS:
            why = f"{name} runs a shell"
        elif (
            head == "subprocess"
            and attr in SUBPROCESS
            and _kw(node, "shell") is not None
            and not _is_const(_kw(node, "shell"), False)
        ):
            why = f"subprocess.{attr}(shell=...) runs a shell"
        elif attr == "from_pretrained" and "Model" in head and not _is_const(_kw(node, "use_safetensors"), True):
            why = f"{name} without use_safetensors=True may unpickle pytorch_model.bin"
        elif attr == "result" and head.rpartition(".")[2].lower().endswith("state"):
            why = f"{name}(): a Prefect state's result is deserialized with the record's serializer (pickle by default)"
        elif _kw(node, "result_serializer") is not None and not _is_const_str(_kw(node, "result_serializer"), "json"):
            why = 'result_serializer other than "json" persists (and later loads) pickles'
        elif _is_const(_kw(node, "persist_result"), True) and not _is_const_str(_kw(node, "result_serializer"), "json"):
            why = 'persist_result=True without result_serializer="json" persists cloudpickle'
        if why is None:
            continue
        if _allowed(lines, node.lineno):
            continue
        found.append((node.lineno, why))
    return found


def _allowed(lines: list[str], lineno: int) -> bool:
    context = lines[max(0, lineno - 2) : lineno]
    return any("# security-ok:" in ln and ln.split("# security-ok:", 1)[1].strip() for ln in context)


def test_no_unsafe_loading_or_shell_in_the_code(chaos_record):
    problems, files = [], 0
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            files += 1
            for line, why in unsafe_calls(path.read_text(), str(path)):
                problems.append(f"{path.relative_to(REPO)}:{line}: {why}")
    chaos_record(
        "unsafe load / eval / shell in code (AST scan)",
        "lm/ tasks/ flows/",
        1,
        int(not problems),
        note="; ".join(problems[:5]) or f"{files} files: no pickle, torch.load w/o weights_only, eval, shell",
    )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.load(open('x', 'rb'))",
        "import pickle\npickle.loads(data)",
        "import cloudpickle\ncloudpickle.loads(b)",
        "import dill\ndill.load(f)",
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import yaml\nyaml.load(s)",
        "import yaml\nyaml.load(s, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(s)",
        "eval(user_input)",
        "exec(code)",
        "import subprocess\nsubprocess.run(f'ls {d}', shell=True)",
        "import subprocess\nsubprocess.Popen(cmd, shell=flag)",
        "import os\nos.system('rm -rf ' + d)",
        "import os\nos.popen(cmd)",
        "AutoModelForCausalLM.from_pretrained(path)",
        "# security-ok:\neval(x)",  # an allowlist comment needs a reason
        "run = run_deployment(name)\nrun.state.result()",
        "state.result(raise_on_failure=False)",
        "flow_state.result()",
        "@flow(persist_result=True)\ndef f(): pass",
        "@task(persist_result=True, result_serializer='pickle')\ndef f(): pass",
        "@flow(result_serializer='compressed/pickle')\ndef f(): pass",
        "env = {'PREFECT_RESULTS_DEFAULT_SERIALIZER': 'pickle'}",
        "os.environ['PREFECT_RESULTS_DEFAULT_SERIALIZER'] = 'cloudpickle'",
    ],
)
def test_the_scan_catches(snippet):
    assert unsafe_calls(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "import yaml\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)",
        "import numpy as np\nnp.load('a.npy')",
        "import subprocess\nsubprocess.run(['ls', d], check=True)",
        "model.eval()",
        "AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)",
        "AutoTokenizer.from_pretrained(path)",
        "# security-ok: parses our own constant\neval('1 + 1')",
        "@flow(persist_result=True, result_serializer='json')\ndef f(): pass",
        "future.result()",
        "env = {'PREFECT_RESULTS_DEFAULT_SERIALIZER': 'json'}",
    ],
)
def test_the_scan_allows(snippet):
    assert not unsafe_calls(snippet), snippet


# --------------------------------------------------------------------------- weights only as safetensors


class _Trap:
    """Unpickling this creates the file ``path``: proof that a pickle was loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_checkpoint_is_refused_not_loaded(tmp_path, chaos_record):
    from lm.model import load_model
    from lm.model.transformer import ModelConfig, TransformerLM
    from lm.train.checkpoint import load_checkpoint, save_checkpoint

    sentinel = tmp_path / "pwned"
    ck = tmp_path / "ck"
    ck.mkdir()
    for name in ("model.pt", "pytorch_model.bin"):
        (ck / name).write_bytes(pickle.dumps({"weights": _Trap(str(sentinel))}))
    try:
        load_model(ck)
        refused = False
    except ValueError as e:
        refused = "pickle" in str(e) and "safetensors" in str(e)
    chaos_record(
        "booby-trapped pickle checkpoint",
        "checkpoint load",
        1,
        int(refused and not sentinel.exists()),
        note="refused with a clear error; never unpickled",
    )
    assert refused and not sentinel.exists()
    with pytest.raises(ValueError, match=r"refusing to load .*model\.(pt|bin).*pickle.*safetensors"):
        load_model(ck)
    cfg = ModelConfig(vocab_size=64, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    with pytest.raises(ValueError, match="pickle"):
        load_checkpoint(ck, TransformerLM(cfg))
    assert not sentinel.exists()
    # beside a real safetensors checkpoint, a planted pickle is simply never read
    good = tmp_path / "good"
    save_checkpoint(TransformerLM(cfg), None, 1, good)
    (good / "model.pt").write_bytes(pickle.dumps(_Trap(str(sentinel))))
    assert load_model(good).config.d_model == 16
    assert not sentinel.exists()
    assert sorted(p.name for p in good.iterdir()) == ["meta.json", "model.pt", "model.safetensors"]


# --------------------------------------------------------------------------- configured paths only


def test_models_and_tokenizers_come_from_configured_paths(tmp_path, monkeypatch):
    from lm.data.classifier import load_classifier
    from lm.data.langid import lid_model_path
    from lm.data.quality import default_model_path
    from lm.tokenizer.tokenizer import Tokenizer

    # a file planted in the working directory under a default's name is never picked up
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMPIPE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "quality-v1.bin").write_bytes(b"planted")
    (tmp_path / "lid.176.ftz").write_bytes(b"planted")
    for kind in ("quality", "nsfw", "toxic"):
        assert default_model_path(kind).parent == tmp_path / "cache" / "classifiers"
    monkeypatch.setenv("LMPIPE_LID_MODEL", str(tmp_path / "models" / "lid.bin"))
    assert lid_model_path() == tmp_path / "models" / "lid.bin"
    # a configured path that is not a fastText model is refused by its magic number, not parsed
    with pytest.raises(ValueError, match="not a fastText model"):
        load_classifier(tmp_path / "quality-v1.bin")
    # a tokenizer directory is read for exactly its three files
    tok = Tokenizer({**{i: bytes([i]) for i in range(256)}, 256: b"<|endoftext|>"}, [], ["<|endoftext|>"])
    d = tok.save(tmp_path / "tok")
    assert sorted(p.name for p in d.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
    assert Tokenizer.load(d).vocab_size == 257


# --------------------------------------------------------------------------- the artifact root


@pytest.mark.parametrize(
    "name", ["../x", "..", "a/../../b", "/etc", "a/b", "x\\..\\y", "", ".hidden", "UP", "a" * 65, "x\x00y"]
)
def test_stage_names_cannot_leave_the_root(tmp_path, name):
    with pytest.raises(ValueError, match="invalid stage name"):
        validate_name(name)
    with pytest.raises(ValueError, match="invalid stage name"):
        Stage(tmp_path / "root", name, version="1", config={})
    assert not (tmp_path / "root").exists() and not (tmp_path / "x").exists()


# every flow parameter that names something (a stage, a kind) rather than a path
NAME_LIKE = {
    "pipeline": ["start_from", "stop_after", "optional_stages", "stages", "manifests"],
    "train-quality-classifier": ["kind"],
}


@pytest.mark.parametrize("flow", sorted(NAME_LIKE))
@pytest.mark.parametrize("bad", ["../escape", "/tmp/escape", "data/../../escape"])
def test_flow_name_parameters_refuse_paths(flow, bad):
    import flows.cli as cli

    model = cli.config_model(cli.load_flow(flow))
    for field in NAME_LIKE[flow]:
        ann = str(model.model_fields[field].annotation)
        value = (
            [bad]
            if ann.startswith("list")
            else {bad: {} if field == "stages" else "/tmp"}
            if ann.startswith("dict")
            else bad
        )
        with pytest.raises(ValueError, match=field):
            model.model_validate({field: value})


def test_symlinks_cannot_redirect_writes(tmp_path, chaos_record):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    # a stage directory that is a symlink to somewhere outside the root: refused
    st = Stage(root, "extract", version="1", config={"a": 1})
    st.path.parent.mkdir(parents=True)
    st.path.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the artifact root"):
        with st.open_shard(0, schema=pa.schema([("id", pa.string())])) as w:
            w.write({"id": "a"})
    with pytest.raises(ValueError, match="outside the artifact root"):
        st.commit()
    assert list(outside.iterdir()) == []
    # a shard name planted as a symlink to an outside file: replaced, the outside file untouched
    st2 = Stage(root, "extract", version="1", config={"a": 2})
    st2.path.mkdir(parents=True)
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    (st2.path / "part-00000.parquet").symlink_to(victim)
    (st2.path / "part-00000.done.json").symlink_to(victim)
    with st2.open_shard(0, schema=pa.schema([("id", pa.string())])) as w:
        w.count_in()
        w.write({"id": "a"})
    st2.commit()
    chaos_record(
        "symlinks planted in the stage tree",
        "stage contract",
        1,
        int(victim.read_text() == "keep me" and not list(p for p in outside.iterdir() if p != victim)),
        note="stage dir link refused; shard link replaced, not followed",
    )
    assert victim.read_text() == "keep me"
    assert not (st2.path / "part-00000.parquet").is_symlink() and st2.shard_done(0)


# --------------------------------------------------------------------------- the server


def _listening(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port`` (from /proc/net/tcp and tcp6)."""
    out = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                raw = bytes.fromhex(addr)
                if width == 8:
                    out.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    out.add(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))
    return out


# --------------------------------------------------------------------------- credentials


def test_source_urls_with_credentials_are_refused_before_work(prefect_harness, tmp_path, chaos_record):
    from flows.data import DataConfig, data_flow

    cfg = DataConfig(
        sources=["https://alice:hunter2@data.example.org/crawl.warc.gz"], root=str(tmp_path / "out"), filters=None
    )
    with pytest.raises(ValueError, match="carries credentials") as ei:
        data_flow(config=cfg)
    leaked = "hunter2" in str(ei.value) or "alice" in str(ei.value)
    chaos_record(
        "credentials in a source URL",
        "data flow config",
        1,
        int(not leaked and not (tmp_path / "out").exists()),
        note="refused before work; secret not echoed",
    )
    assert not leaked
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- roots under lmpipe server


def test_roots_outside_the_allowed_ones_are_refused(tmp_path, monkeypatch):
    """`lmpipe server` sets LMPIPE_ALLOWED_ROOTS for its workers: a run's config may name a root
    only under them (realpath: no `..` or symlink way out); unset, any root is fine."""
    from flows.data import DataConfig
    from lm.data.storage import check_root

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    assert check_root(str(outside)) == str(outside)  # no server: no confinement
    monkeypatch.setenv("LMPIPE_ALLOWED_ROOTS", f"{allowed}{os.pathsep}s3://team-bucket/lmpipe")
    for ok in (allowed, allowed / "new" / "dir", "s3://team-bucket/lmpipe/run1"):
        assert check_root(str(ok)) == str(ok)
    for bad in (
        outside,
        allowed / ".." / "outside",
        allowed / "link" / "x",
        "/etc",
        "s3://team-bucket/other",
        "s3://team-bucket/lmpipe2",
    ):
        with pytest.raises(ValueError, match="outside the roots this server allows"):
            check_root(str(bad))
    with pytest.raises(ValueError, match="outside the roots this server allows"):
        DataConfig(sources=["x.warc.gz"], root=str(outside))
    # A path that is not a root (an input to read) is not confined by this rule.
    assert check_root(str(outside), "tokens") == str(outside)
