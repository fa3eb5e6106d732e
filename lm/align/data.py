"""Row schemas and prompt templates of the alignment stages.

Three kinds of data, each a Parquet schema so stages exchange them as shards:

    INSTRUCTION_SCHEMA   (id, prompt, response)            SFT pairs
    PREFERENCE_SCHEMA    (id, prompt, chosen, rejected)     DPO triples
    PROBLEM_SCHEMA       (id, prompt, answer)               verifiable problems (GRPO, eval)

Templates are ``str.format`` strings with named fields; the CS336 ones (``r1_zero``,
``alpaca_sft``, ``question_only``, ``zero_shot_system``) are read from a prompts directory
(``../shared/reference/assignment5-alignment/prompts``) or given inline.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pyarrow as pa

INSTRUCTION_SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("response", pa.string())])
PREFERENCE_SCHEMA = pa.schema(
    [("id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]
)
PROBLEM_SCHEMA = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("answer", pa.string())])

# Templates that need no file. "plain" is the identity; the demo's arithmetic prompts are plain.
BUILTIN_TEMPLATES = {
    "plain": "{question}",
    "question_answer": "Question: {question}\nAnswer:",
}


def template_file(name_or_path: str, prompts_dir: str | os.PathLike | None = None) -> Path | None:
    """The file ``load_template`` reads (None: a builtin, or not found): stages declare it as an input."""
    if name_or_path in BUILTIN_TEMPLATES:
        return None
    p = Path(name_or_path)
    if p.suffix == ".prompt" and p.exists():
        return p
    if prompts_dir is not None:
        q = Path(prompts_dir) / f"{name_or_path}.prompt"
        if q.exists():
            return q
    return None


def load_template(name_or_path: str, prompts_dir: str | os.PathLike | None = None) -> str:
    """A template by builtin name, by file path, or as ``<prompts_dir>/<name>.prompt``."""
    if name_or_path in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name_or_path]
    path = template_file(name_or_path, prompts_dir)
    if path is not None:
        return path.read_text()
    raise FileNotFoundError(
        f"template {name_or_path!r} not found: use one of {sorted(BUILTIN_TEMPLATES)}, a .prompt file, "
        f"or a name in prompts_dir ({prompts_dir})"
    )


def template_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def render(template: str, **fields: str) -> str:
    """Fill a template; a missing field is a ValueError naming it (not a bare KeyError); extra fields are unused."""
    missing = template_fields(template) - set(fields)
    if missing:
        raise ValueError(f"template needs fields {sorted(missing)}; got {sorted(fields)}")
    return template.format(**{k: fields[k] for k in template_fields(template)})
