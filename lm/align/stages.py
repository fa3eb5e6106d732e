"""The alignment stages as plain functions (no Prefect): each reads manifests, writes a stage.

    build_align_data   -> <root>/align-data/<fp>/   train shard (part-0), eval shard (part-1)
    make_demo_base     -> <root>/align-base/<fp>/   char-level TransformerLM pretrained on the demo task
    run_sft / run_dpo / run_grpo
                       -> <root>/{sft,dpo,grpo}/<fp>/  checkpoint/ + curves.png + a shard of held-out
                                                     samples; the manifest has ``checkpoint``,
                                                     ``model_config``, ``tokenizer`` and ``metrics``

The evaluate stage (``run_evaluate``) is in ``lm.eval.stage``.

A model manifest is any stage manifest with ``checkpoint`` (a checkpoint directory of
``lm.train.save_checkpoint``, or a Hugging Face model directory with the ``hf`` extra) and
``tokenizer`` (a directory ``lm.tokenizer.load.load_tokenizer`` reads): the pretrain
stage's, or one of these. Same inputs + config → same fingerprint → the stage is skipped.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pyarrow as pa
import torch
from pydantic import Field

from lm.align import demo
from lm.align.data import INSTRUCTION_SCHEMA, PREFERENCE_SCHEMA, PROBLEM_SCHEMA, load_template, render, template_file
from lm.align.dpo import DPOConfig, train_dpo
from lm.align.grpo import GRPOConfig, evaluate_rewards, train_grpo
from lm.align.plots import plot_curves
from lm.align.rewards import get_reward_fn
from lm.align.sft import SFTConfig, train_sft
from lm.config import Config
from lm.data.manifest import Manifest
from lm.data.shards import Stage
from lm.eval.datasets import load_gsm8k, load_sft_jsonl
from lm.tokenizer.load import load_tokenizer

VERSION = "1"
OnProgress = Callable[[dict], None]  # a progress hook: {"step": …, "loss": …} per step, {"phase": "…"} between phases
Kind = Literal["instruction", "preference", "problem"]
SCHEMAS = {"instruction": INSTRUCTION_SCHEMA, "preference": PREFERENCE_SCHEMA, "problem": PROBLEM_SCHEMA}


class AlignDataConfig(Config):
    """Where alignment examples come from and how prompts are written."""

    source: Literal["addition", "gsm8k", "sft_jsonl"] = Field(
        "addition",
        description="addition: generated demo problems; gsm8k: GSM8K jsonl; sft_jsonl: {prompt, response} lines.",
    )
    train_path: str | None = Field(None, description="Training file (gsm8k / sft_jsonl).")
    eval_path: str | None = Field(
        None, description="Held-out file (gsm8k / sft_jsonl); default: the last num_eval training rows."
    )
    num_train: int = Field(
        4000, ge=1, le=10**8, description="Training examples (generated, or the first N of the file)."
    )
    num_eval: int = Field(200, ge=1, le=10**8, description="Held-out examples.")
    digits: int = Field(2, ge=1, le=6, description="addition: operands have up to this many digits.")
    template: str = Field(
        "plain",
        description=(
            "Prompt template: builtin name (plain, question_answer), "
            "a .prompt file, or a name in prompts_dir (r1_zero)."
        ),
    )
    prompts_dir: str | None = Field(
        None, description="Directory of .prompt templates (e.g. ../shared/reference/assignment5-alignment/prompts)."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for generated problems and wrong answers.")


class BaseModelConfig(Config):
    """The demo's tiny char-level TransformerLM and its short pretraining."""

    context_length: int = Field(16, ge=4, le=1 << 20, description="Model context in characters.")
    d_model: int = Field(64, ge=8, le=1 << 16, description="Width of the residual stream.")
    num_layers: int = Field(2, ge=1, le=1024, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, le=1024, description="Attention heads.")
    d_ff: int = Field(192, ge=8, le=1 << 20, description="SwiGLU hidden width.")
    num_steps: int = Field(200, ge=1, le=1000000000, description="Pretraining steps on packed problem text.")
    batch_size: int = Field(32, ge=1, le=1 << 16, description="Sequences per pretraining step.")
    lr: float = Field(3e-3, gt=0, description="Pretraining learning rate.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Initialization and batch seed.")
    num_threads: int | None = Field(
        1, ge=1, le=1024, description="torch CPU threads (1 is fastest for this tiny model); null = torch default."
    )


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` torch CPU threads, then restore the previous count (a stage must not
    change the process for whatever runs next in it)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seed torch's RNG: the checkpoint records its state, so a rerun after a crash writes a
    byte-identical checkpoint only if it does not depend on what the process did before
    (found by tests/reliability/test_sigkill_train.py). Sampling uses its own ``random.Random``."""
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data


def _split(loader, cfg: AlignDataConfig) -> tuple[list[dict], list[dict]]:
    """Train rows and held-out rows: from eval_path, or else the last rows of the training file
    (at most a fifth of it, so a small file still leaves most rows for training)."""
    if cfg.eval_path:
        return loader(cfg.train_path, limit=cfg.num_train)[0], loader(cfg.eval_path, limit=cfg.num_eval)[0]
    rows, _ = loader(cfg.train_path, limit=cfg.num_train + cfg.num_eval)
    n_eval = min(cfg.num_eval, max(1, len(rows) // 5)) if len(rows) > 1 else 0
    return rows[: len(rows) - n_eval][: cfg.num_train], rows[len(rows) - n_eval :]


def _prompt(template: str, text: str) -> str:
    """Fill a question-style ({question}) or instruction-style ({instruction}, {response}) template.

    An instruction template's prompt is everything before ``{response}`` (the response is
    what the model writes; the rest of the template, e.g. a trailing newline, is not prompt).
    """
    return render(template.split("{response}", 1)[0], question=text, instruction=text)


def _rows(cfg: AlignDataConfig, kind: Kind) -> tuple[list[dict], list[dict]]:
    rng = random.Random(cfg.seed)
    tmpl = load_template(cfg.template, cfg.prompts_dir)
    if cfg.source == "addition":
        train, evals = demo.split_problems(cfg.num_train, cfg.num_eval, cfg.digits, cfg.seed)
        items = lambda ps, split: [
            {"id": f"{split}-{i}", "question": p, "answer": a, "solution": a} for i, (p, a) in enumerate(ps)
        ]
        tr, ev = items(train, "train"), items(evals, "eval")
    elif cfg.source == "gsm8k":
        if not cfg.train_path:
            raise ValueError("data.source='gsm8k' needs data.train_path (a GSM8K jsonl)")
        tr, ev = _split(load_gsm8k, cfg)
    else:
        if kind != "instruction":
            raise ValueError(
                "data.source='sft_jsonl' has no answers to verify or "
                f"rank; it only gives kind='instruction', not {kind!r}"
            )
        if not cfg.train_path:
            raise ValueError("data.source='sft_jsonl' needs data.train_path")
        tr, ev = _split(load_sft_jsonl, cfg)
        conv = lambda rs: [{"id": r["id"], "prompt": _prompt(tmpl, r["prompt"]), "response": r["response"]} for r in rs]
        return conv(tr), conv(ev)

    def convert(r: dict) -> dict:
        prompt = _prompt(tmpl, r["question"])
        if kind == "problem":
            return {"id": r["id"], "prompt": prompt, "answer": r["answer"]}
        if kind == "instruction":
            return {"id": r["id"], "prompt": prompt, "response": r["solution"]}
        wrong = demo.wrong_answer(r["answer"], rng)
        rejected = (
            r["solution"][: len(r["solution"]) - len(r["answer"])] + wrong
            if r["solution"].endswith(r["answer"])
            else wrong
        )
        return {"id": r["id"], "prompt": prompt, "chosen": r["solution"], "rejected": rejected}

    return [convert(r) for r in tr], [convert(r) for r in ev]


def declared_files(**paths) -> dict:
    """Input files by role, declared to the Stage: their content enters the fingerprint. None or a
    missing file is left out (the loader fails on it with its own message, after the argument checks)."""
    return {role: p for role, p in paths.items() if p is not None and Path(p).is_file()}


def build_align_data(root: str | Path, cfg: AlignDataConfig, kind: Kind) -> Path:
    """Write train (shard 0) and held-out (shard 1) rows of ``kind``; bad rows are rejected with a reason."""
    files = declared_files(
        template=template_file(cfg.template, cfg.prompts_dir),
        **({"train": cfg.train_path, "eval": cfg.eval_path} if cfg.source != "addition" else {}),
    )
    stage = Stage(root, "align-data", version=VERSION, config={**cfg.model_dump(), "kind": kind}, files=files)
    if stage.is_complete():
        return stage.manifest_path
    train, evals = _rows(cfg, kind)
    for i, (split, rows) in enumerate((("train", train), ("eval", evals))):
        with stage.open_shard(i, schema=SCHEMAS[kind], source=split) as w:
            for r in rows:
                w.count_in()
                if not r["prompt"].strip():
                    w.reject(r, "empty_prompt")
                elif kind == "preference" and r["chosen"] == r["rejected"]:
                    w.reject(r, "chosen_equals_rejected")
                else:
                    w.write(r)
    return stage.commit(num_shards=2, extra={"kind": kind})


def read_split(data_manifest: str | Path, split: str) -> list[dict]:
    """Rows of the ``split`` ("train" / "eval") shard of an align-data stage, sha256-verified."""
    m = Manifest.read(data_manifest)
    return [row for i, s in enumerate(m.shards) if s.source == split for row in m.read_shard(i).to_pylist()]


# --------------------------------------------------------------------------- models


def load_policy(model_manifest: str | Path):
    """(model, tokenizer, manifest) of a model manifest (see the module docstring)."""
    m = Manifest.read(model_manifest)
    if not m.extra.get("checkpoint"):
        raise ValueError(f"manifest {m.path} has no 'checkpoint': pass a pretrain/sft/dpo/grpo/align-base manifest")
    ckpt = Path(m.extra["checkpoint"])
    if (ckpt / "meta.json").exists():
        from lm.model import load_model

        model = load_model(ckpt)
    elif (ckpt / "config.json").exists():
        from transformers import AutoModelForCausalLM  # optional hf extra

        # safetensors weights only: a pytorch_model.bin is a pickle and is refused, not unpickled
        model = AutoModelForCausalLM.from_pretrained(str(ckpt), use_safetensors=True)
    else:
        raise FileNotFoundError(
            f"{ckpt} is neither our checkpoint (meta.json) nor a Hugging Face model dir (config.json)"
        )
    tok = load_tokenizer(m.extra.get("tokenizer"))  # no tokenizer recorded = byte-level
    if getattr(tok, "eot_id", None) is None:
        raise ValueError(
            f"tokenizer {m.extra.get('tokenizer')} has no <|endoftext|> token: alignment needs it to end responses "
            "(train the tokenizer with special_tokens=['<|endoftext|>'])"
        )
    return model, tok, m


def save_policy(model, out: Path, step: int, extra: dict) -> dict:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(out), safe_serialization=True)
        return {}
    from lm.train import save_checkpoint

    save_checkpoint(model, None, step, out, extra=extra)
    return model.config.model_dump()


def make_demo_base(root: str | Path, data: AlignDataConfig, cfg: BaseModelConfig) -> Path:
    """Pretrain the demo's char-level model on the addition training problems (text only)."""
    if data.source != "addition":
        raise ValueError(
            f"the demo base model is for data.source='addition', not {data.source!r}; pass a model manifest"
        )
    stage = Stage(root, "align-base", version=VERSION, config={"data": data.model_dump(), "model": cfg.model_dump()})
    if stage.is_complete():
        return stage.manifest_path
    seed_everything(cfg.seed)
    train, _ = demo.split_problems(data.num_train, data.num_eval, data.digits, data.seed)
    mc = cfg.model_dump(include={"context_length", "d_model", "num_layers", "num_heads", "d_ff"})
    with torch_threads(cfg.num_threads):
        model, tok, info = demo.make_base_model(
            train, model_config=mc, num_steps=cfg.num_steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed
        )
    stage.ensure_dir()
    tok.save(stage.path / "tokenizer")
    mcfg = save_policy(model, stage.path / "checkpoint", cfg.num_steps, {"stage": "align-base"})
    plot_curves(
        stage.path / "curves.png",
        "demo base pretraining",
        [("loss", [("train loss", range(1, len(info["loss"]) + 1), info["loss"])])],
    )
    return stage.commit(
        extra={
            "checkpoint": str(stage.path / "checkpoint"),
            "model_config": mcfg,
            "tokenizer": str(stage.path / "tokenizer"),
            "metrics": {"final_loss": info["loss"][-1], "seconds": info["seconds"]},
        }
    )


# --------------------------------------------------------------------------- training stages

SAMPLE_SCHEMA = pa.schema(
    [
        ("id", "string"),
        ("prompt", "string"),
        ("reference", "string"),
        ("generation_before", "string"),
        ("generation_after", "string"),
        ("reward_before", "float64"),
        ("reward_after", "float64"),
    ]
)


class StageOptions(Config):
    """Settings shared by the SFT, DPO and GRPO stages."""

    verifier: str | None = Field(
        "arithmetic",
        description=(
            "Verifier for accuracy before/after on held-out prompts (arithmetic, gsm8k, r1_zero) or null for none."
        ),
    )
    max_new_tokens: int = Field(8, ge=1, le=1 << 16, description="Longest generation when sampling held-out answers.")
    num_samples: int = Field(
        200,
        ge=0,
        le=10**8,
        description="Held-out prompts decoded before and after training (accuracy and the samples shard).",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch CPU threads (1 is fastest for tiny models on a busy machine); null = torch default.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="torch seed.")


def _generate_scores(
    model, tok, prompts: list[str], refs: list[str], opts: StageOptions, say: OnProgress, when: str
) -> tuple[list[str], list[float | None]]:
    if not prompts:
        return [], []
    say({"phase": f"decoding {len(prompts)} held-out prompts {when} training"})
    fn = (
        get_reward_fn(opts.verifier)
        if opts.verifier
        else (lambda r, t: {"reward": math.nan, "format_reward": math.nan})
    )
    m = evaluate_rewards(model, tok, list(zip(prompts, refs)), fn, max_new_tokens=opts.max_new_tokens)
    return m["responses"], [None if math.isnan(r) else r for r in m["rewards"]]


def _train_stage(
    name: str,
    root,
    model_manifest,
    data_manifest,
    config: dict,
    opts: StageOptions,
    ref_key: str,
    train_fn,
    curves,
    on_progress: OnProgress | None,
) -> Path:
    """Shared body: load model and data, decode held-out prompts, train, decode again, save, commit.

    ``train_fn(model, tok, train_rows, eval_rows, say)`` runs the loop, passing ``say`` on as its ``log``.
    """
    stage = Stage(
        root,
        name,
        version=VERSION,
        config={**config, "options": opts.model_dump()},
        inputs=[model_manifest, data_manifest],
    )
    if stage.is_complete():
        return stage.manifest_path
    say = on_progress or (lambda event: None)
    seed_everything(opts.seed)
    model, tok, upstream = load_policy(model_manifest)
    train_rows, eval_rows = read_split(data_manifest, "train"), read_split(data_manifest, "eval")
    sample_rows = eval_rows[: opts.num_samples]
    prompts, refs = [r["prompt"] for r in sample_rows], [r[ref_key] for r in sample_rows]
    with torch_threads(opts.num_threads):
        before, r_before = _generate_scores(model, tok, prompts, refs, opts, say, "before")
        hist = train_fn(model, tok, train_rows, eval_rows, say)
        after, r_after = _generate_scores(model, tok, prompts, refs, opts, say, "after")
    stage.ensure_dir()
    mcfg = save_policy(
        model, stage.path / "checkpoint", len(hist.get("step", [])), {"stage": name, "upstream": str(upstream.path)}
    )
    plot_curves(stage.path / "curves.png", f"{name}", curves(hist))
    with stage.open_shard(0, schema=SAMPLE_SCHEMA, source="eval") as w:
        for r, p, ref, b, a, rb, ra in zip(sample_rows, prompts, refs, before, after, r_before, r_after):
            w.count_in()
            w.write(
                {
                    "id": r["id"],
                    "prompt": p,
                    "reference": ref,
                    "generation_before": b,
                    "generation_after": a,
                    "reward_before": rb,
                    "reward_after": ra,
                }
            )
        for k, v in hist.get("counts", {}).items():
            w.add_count(k, int(v))
    scored = [x for x in r_before if x is not None]
    metrics = {k: v for k, v in hist.items() if not isinstance(v, (list, dict))}
    if scored:
        metrics["accuracy_before"] = sum(scored) / len(scored)
        metrics["accuracy_after"] = sum(x for x in r_after if x is not None) / len(scored)
        metrics["num_scored"] = len(scored)
    (stage.path / "history.json").write_text(
        json.dumps({k: v for k, v in hist.items() if k != "eval_samples"}, default=str)
    )
    return stage.commit(
        num_shards=1,
        extra={
            "checkpoint": str(stage.path / "checkpoint"),
            "model_config": mcfg,
            "tokenizer": upstream.extra.get("tokenizer"),
            "metrics": metrics,
            "plot": str(stage.path / "curves.png"),
        },
    )


def run_sft(
    root, model_manifest, data_manifest, cfg: SFTConfig, opts: StageOptions, *, on_progress: OnProgress | None = None
) -> Path:
    if cfg.stop_at_reward is not None and not opts.verifier:
        raise ValueError("sft.stop_at_reward needs options.verifier to score held-out answers")

    def train(model, tok, tr, ev, say):
        pair = lambda rs: [(r["prompt"], r["response"]) for r in rs]
        # the stop rule looks at training problems only: the held-out ones stay unseen by every choice
        probe = [(r["prompt"], r["response"]) for r in tr[: opts.num_samples]]
        reward = None
        if opts.verifier:
            fn = get_reward_fn(opts.verifier)
            reward = lambda m: evaluate_rewards(m, tok, probe, fn, max_new_tokens=opts.max_new_tokens)["reward_mean"]
        return train_sft(model, tok, pair(tr), pair(ev), cfg, probe_reward=reward, log=say)

    curves = lambda h: [
        ("loss", [("train NLL/token", h["step"], h["loss"])]),
        (
            "NLL / reward",
            [("held-out response NLL/token", h["eval_step"], h["eval_nll"])]
            + (
                [("verifier reward, train sample (greedy)", h["eval_step"], h["probe_reward"])]
                if h["probe_reward"]
                else []
            ),
        ),
    ]
    return _train_stage(
        "sft",
        root,
        model_manifest,
        data_manifest,
        {"sft": cfg.model_dump()},
        opts,
        "response",
        train,
        curves,
        on_progress,
    )


def run_dpo(
    root, model_manifest, data_manifest, cfg: DPOConfig, opts: StageOptions, *, on_progress: OnProgress | None = None
) -> Path:
    def train(model, tok, tr, ev, say):
        ref, _, _ = load_policy(model_manifest)
        trip = lambda rs: [(r["prompt"], r["chosen"], r["rejected"]) for r in rs]
        return train_dpo(model, ref, tok, trip(tr), trip(ev), cfg, log=say)

    curves = lambda h: [
        ("DPO loss", [("train", h["step"], h["loss"]), ("held-out", h["eval_step"], h["eval_loss"])]),
        (
            "preference accuracy",
            [
                ("train (margin>0)", h["step"], h["train_accuracy"]),
                ("held-out (margin>0)", h["eval_step"], h["eval_accuracy"]),
            ],
        ),
    ]
    return _train_stage(
        "dpo",
        root,
        model_manifest,
        data_manifest,
        {"dpo": cfg.model_dump()},
        opts,
        "chosen",
        train,
        curves,
        on_progress,
    )


def run_grpo(
    root, model_manifest, data_manifest, cfg: GRPOConfig, opts: StageOptions, *, on_progress: OnProgress | None = None
) -> Path:
    if not opts.verifier:
        raise ValueError("GRPO needs a verifier (options.verifier: arithmetic, gsm8k or r1_zero)")
    reward_fn = get_reward_fn(opts.verifier)

    def train(model, tok, tr, ev, say):
        prob = lambda rs: [(r["prompt"], r["answer"]) for r in rs]
        return train_grpo(model, tok, prob(tr), prob(ev), reward_fn, cfg, log=say)

    curves = lambda h: [
        (
            "mean verifier reward",
            [
                ("rollouts (sampled)", h["step"], h["train_reward"]),
                ("held-out (greedy)", h["eval_step"], h["eval_reward"]),
            ],
        ),
        ("loss / entropy", [("policy loss", h["step"], h["loss"]), ("token entropy", h["step"], h["entropy"])]),
    ]
    return _train_stage(
        "grpo",
        root,
        model_manifest,
        data_manifest,
        {"grpo": cfg.model_dump()},
        opts,
        "answer",
        train,
        curves,
        on_progress,
    )


__all__ = [
    "AlignDataConfig",
    "BaseModelConfig",
    "StageOptions",
    "build_align_data",
    "load_policy",
    "make_demo_base",
    "read_split",
    "run_dpo",
    "run_grpo",
    "run_sft",
]
