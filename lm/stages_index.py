"""Every pipeline stage: its name and the function that declares it (builds its ``Stage``).

A stage's fingerprint is computed from its declaration (``lm.data.shards.Stage``: version,
config, upstream stages, ``files`` by content hash, ``env``). ``tests/security/
test_declared_inputs.py`` runs every stage listed here on tiny inputs, records every file it
opens and every environment variable it reads, and fails when one is not declared. It also
finds every ``Stage(`` call in lm/ and fails when its function is not listed here: a new
stage joins this list (and the walk) or the suite fails.

Names in angle brackets stand for a family: ``<filter>`` is one stage per filter of the
chain (``materialize_each``).
"""

from __future__ import annotations

# (stage name, "module:function" whose body calls Stage(...) for it)
STAGES: tuple[tuple[str, str], ...] = (
    ("extract", "lm.data.stages:extract_stage"),
    ("filters", "lm.data.filters.stage:filter_stage"),
    ("<filter>", "lm.data.filters.stage:materialized_stages"),
    ("line_counts", "lm.data.dedup.exact_stages:line_counts_stage"),
    ("line_duplicates", "lm.data.dedup.exact_stages:line_duplicates_stage"),
    ("exact_dedup", "lm.data.dedup.exact_stages:exact_dedup_stage"),
    ("minhash_signatures", "lm.data.dedup.minhash_stages:signatures_stage"),
    ("minhash_buckets", "lm.data.dedup.minhash_stages:buckets_stage"),
    ("minhash_clusters", "lm.data.dedup.minhash_stages:clusters_stage"),
    ("minhash", "lm.data.dedup.minhash_stages:minhash_stage"),
    ("tokenizer", "lm.tokenizer.stages:tokenizer_stage"),
    ("tokenize", "lm.tokenizer.stages:tokenize_stage"),
    ("bytetokens", "lm.train.stage:byte_tokenize"),
    ("pretrain", "lm.train.stage:pretrain_stage"),
    ("scaling", "lm.scaling.stage:scaling_stage"),
    ("align-data", "lm.align.stages:build_align_data"),
    ("align-base", "lm.align.stages:make_demo_base"),
    ("sft", "lm.align.stages:_train_stage"),
    ("dpo", "lm.align.stages:_train_stage"),
    ("grpo", "lm.align.stages:_train_stage"),
    ("evaluate", "lm.eval.stage:run_evaluate"),
)


def stage_names() -> list[str]:
    return [name for name, _ in STAGES]


def declaring_functions() -> set[str]:
    return {where for _, where in STAGES}
