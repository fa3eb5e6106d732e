"""The ``pretrain`` flow: token shards in → a trained checkpoint stage out, with loss table, curve and samples.

    lmpipe run pretrain --config configs/pretrain-demo.yaml
    lmpipe run pretrain --config configs/pretrain-tinystories.yaml --set tokens=outputs/tokenize/<fp>
    lmpipe generate --checkpoint outputs/pretrain/<fp> --prompt "Once upon a time"

Reads the tokenize stage's token shards (``tokens``) or a text file as bytes (``text_file``);
writes ``<root>/pretrain/<fingerprint>/`` (the stage: lm/train/stage.py, also runnable without
Prefect as ``lm.train.stage.run_pretrain``). A finished stage is skipped;
a failed or timed-out training attempt is retried ``retries`` times, resuming from its last
checkpoint. Publishes: a loss table, a markdown summary with the loss and throughput curves and
sample generations.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from lm.data.shards import read_manifest
from lm.train.stage import diverged_message
from tasks.artifacts import artifact_key, image_markdown, markdown_table
from tasks.pretrain import PretrainConfig, byte_tokenize_task, finalize_task, pretrain_stage, train_task


@flow(name="pretrain", log_prints=True)
def pretrain_flow(config: PretrainConfig) -> str:
    """Train a TransformerLM on token shards; returns the pretrain stage's manifest path."""
    logger = get_run_logger()
    tokens = config.tokens
    if tokens is None:
        tokens = byte_tokenize_task(config.text_file, config.root, config.val_fraction)
    tokens_manifest = read_manifest(tokens)["_path"]  # a local path or a URL (read via the cache)
    stage = pretrain_stage(config, tokens_manifest)
    if stage.is_complete():
        logger.info("pretrain stage %s is complete; skipping", stage.path)
    else:
        summary = train_task.with_options(retries=config.retries, retry_delay_seconds=5)(
            config, tokens_manifest, str(stage.path / "run")
        )
        if summary["status"] == "diverged":
            create_markdown_artifact(
                key=artifact_key("pretrain", "summary"), markdown=f"# pretrain diverged\n\n{diverged_message(summary)}"
            )
            raise RuntimeError(diverged_message(summary))
        finalize_task(config, tokens_manifest, summary)
    publish_pretrain(stage.manifest_path)
    return str(stage.manifest_path)


def publish_pretrain(manifest_path: Path) -> None:
    m = read_manifest(manifest_path)
    d = Path(m["_path"]).parent
    losses = json.loads((d / "losses.json").read_text())
    rows = [{"metric": k, "value": round(v, 4) if isinstance(v, float) else v} for k, v in losses.items()]
    create_table_artifact(
        table=rows, key=artifact_key("pretrain", "losses"), description="pretrain: final losses vs unigram entropy"
    )
    samples = json.loads((d / "samples.json").read_text())
    md = [
        "# pretrain",
        f"Fingerprint `{m['fingerprint']}` · checkpoint `{m['checkpoint']}` · tokenizer `{m.get('tokenizer')}`",
        "",
        markdown_table(rows),
        image_markdown(d / "loss_curve.png", "loss and throughput"),
        "## Model",
        "```json\n" + json.dumps(m["model_config"], indent=1) + "\n```",
        "## Samples",
    ]
    for s in samples:
        md.append(f"**{s['prompt']}**")
        md.append("> " + (s["prompt"] + s["completion"]).replace("\n", "\n> ") + "\n")
    if not samples:
        md.append("_no samples (tokenizer not loadable)_")
    create_markdown_artifact(
        markdown="\n".join(md), key=artifact_key("pretrain", "summary"), description="pretrain: loss curve and samples"
    )
