"""The evaluate stage as a plain function (no Prefect): a model manifest in, one shard per
task (``EVAL_SCHEMA``: every generation kept, graded) and the accuracy / perplexity metrics out.

    run_evaluate -> <root>/evaluate/<fp>/   (the model manifest as its input; the task data,
                                            prompt template and perplexity text declared by content)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from lm.align import demo
from lm.align.data import load_template, template_file
from lm.align.stages import VERSION, AlignDataConfig, OnProgress, declared_files, load_policy, torch_threads
from lm.config import Config
from lm.data.shards import Stage
from lm.eval.datasets import load_gsm8k, load_mmlu
from lm.eval.harness import EVAL_SCHEMA, evaluate_generation, perplexity


class EvalConfig(Config):
    """What the evaluate stage measures."""

    tasks: list[Literal["gsm8k", "mmlu", "arithmetic"]] = Field(
        ["arithmetic"], max_length=16, description="Generation tasks to run."
    )
    gsm8k_path: str | None = Field(None, description="GSM8K test jsonl.")
    mmlu_path: str | None = Field(None, description="MMLU csv file or directory of csvs.")
    arithmetic: AlignDataConfig = Field(
        default_factory=AlignDataConfig, description="Held-out addition problems (its eval split)."
    )
    limit: int = Field(200, ge=1, le=10**8, description="Problems per task.")
    template: str = Field("plain", description="Prompt template for gsm8k/mmlu questions.")
    prompts_dir: str | None = Field(None, description="Directory of .prompt templates.")
    max_new_tokens: int = Field(8, ge=1, le=1 << 16, description="Longest generation.")
    perplexity_path: str | None = Field(
        None,
        description=(
            "Text/jsonl file whose perplexity to measure (one document "
            "per line; jsonl: its 'text', 'response' or 'solution')."
        ),
    )
    num_threads: int | None = Field(None, ge=1, le=1024, description="torch CPU threads; null = torch default.")


def _eval_rows(cfg: EvalConfig, task: str) -> list[dict]:
    if task == "gsm8k":
        if not cfg.gsm8k_path:
            raise ValueError("task gsm8k needs gsm8k_path")
        return load_gsm8k(cfg.gsm8k_path, limit=cfg.limit)[0]
    if task == "mmlu":
        if not cfg.mmlu_path:
            raise ValueError("task mmlu needs mmlu_path")
        return load_mmlu(cfg.mmlu_path, limit=cfg.limit)[0]
    a = cfg.arithmetic
    _, evals = demo.split_problems(a.num_train, a.num_eval, a.digits, a.seed)
    return [{"id": f"eval-{i}", "question": p, "answer": ans} for i, (p, ans) in enumerate(evals[: cfg.limit])]


def _eval_files(cfg: EvalConfig) -> dict:
    """The files the evaluate stage reads (its fingerprint covers their content): task data,
    template, perplexity text."""
    files = declared_files(perplexity=cfg.perplexity_path)
    if "gsm8k" in cfg.tasks:
        files |= declared_files(gsm8k=cfg.gsm8k_path)
    if "mmlu" in cfg.tasks and cfg.mmlu_path:
        p = Path(cfg.mmlu_path)
        files |= {f"mmlu/{f.name}": f for f in sorted(p.glob("*.csv"))} if p.is_dir() else {"mmlu": p}
    if set(cfg.tasks) - {"arithmetic"}:
        files |= declared_files(template=template_file(cfg.template, cfg.prompts_dir))
    return files


def _perplexity_texts(path: str) -> list[str]:
    texts = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            r = json.loads(line)
            texts.append(
                next((r[k] for k in ("text", "response", "solution", "answer") if isinstance(r.get(k), str)), "")
            )
        else:
            texts.append(line)
    return [t for t in texts if t]


def evaluate_size(cfg: EvalConfig) -> int:
    """How many problems the evaluate stage grades (its progress total)."""
    return sum(len(_eval_rows(cfg, task)) for task in cfg.tasks)


def run_evaluate(root, model_manifest, cfg: EvalConfig, *, on_progress: OnProgress | None = None) -> Path:
    """One EVAL_SCHEMA shard per task; accuracy per task and perplexity in the manifest's metrics.

    ``on_progress`` gets {"step": problems graded so far, "accuracy": of the current task} per generation batch.
    """
    stage = Stage(
        root, "evaluate", version=VERSION, config=cfg.model_dump(), inputs=[model_manifest], files=_eval_files(cfg)
    )
    if stage.is_complete():
        return stage.manifest_path
    model, tok, _ = load_policy(model_manifest)
    metrics: dict = {}
    with torch_threads(cfg.num_threads):
        _evaluate_into(stage, model, tok, cfg, metrics, on_progress or (lambda event: None))
    return stage.commit(num_shards=len(cfg.tasks), extra={"metrics": metrics})


def _evaluate_into(stage: Stage, model, tok, cfg: EvalConfig, metrics: dict, say: OnProgress) -> None:
    graded = 0
    for i, task in enumerate(cfg.tasks):
        rows = _eval_rows(cfg, task)
        tmpl = "{question}" if task == "arithmetic" else load_template(cfg.template, cfg.prompts_dir)
        start = graded

        def on_batch(done: int, correct: int, task=task, start=start) -> None:
            say({"step": start + done, f"{task}_accuracy": correct / max(done, 1)})

        try:
            out, counts = evaluate_generation(
                model, tok, task, rows, template=tmpl, max_new_tokens=cfg.max_new_tokens, on_batch=on_batch
            )
        except ValueError as e:  # e.g. a character the demo tokenizer cannot encode
            raise ValueError(f"evaluate task {task!r} failed before generating: {e}") from e
        with stage.open_shard(i, schema=EVAL_SCHEMA, source=task) as w:
            for r in out:
                w.count_in()
                w.write(r)
            for k, v in counts.items():
                w.add_count(f"{task}:{k}", int(v))
        metrics[f"{task}_accuracy"] = counts["correct"] / max(len(out), 1)
        graded += len(out)
    if cfg.perplexity_path:
        say({"phase": f"perplexity of {cfg.perplexity_path}"})
        metrics["perplexity"] = perplexity(model, tok, _perplexity_texts(cfg.perplexity_path))
