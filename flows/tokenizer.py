"""Flow ``tokenizer``: train our byte-level BPE tokenizer on a sample of a corpus stage.

Reads a corpus stage manifest (Parquet shards with a ``text`` column, e.g. the final dedup
stage), samples it up to a byte budget (spread evenly over shards, held-out documents set
aside), trains BPE and writes ``<root>/tokenizer/<fingerprint>/`` (vocab.json, merges.txt,
tokenizer_config.json, tokenizer.json for HF, tokenizer.tiktoken, _manifest.json).
Artifacts: counts, vocab size, bytes/token on held-out text, longest tokens, first merges,
a token-length histogram.

    lmpipe run tokenizer --config configs/tokenizer-demo.yaml --set input=outputs/dedup/<fp>
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from pydantic import ConfigDict, Field, field_validator, model_validator

from lm.config import Config, StageRef
from lm.data.shards import read_manifest
from lm.data.storage import RemotePath, as_path, check_root, commit_file, local_scratch
from lm.tokenizer.gpt2 import EOT
from lm.tokenizer.stages import local_tokenizer_dir
from tasks.artifacts import image_markdown, markdown_table, publish_stage
from tasks.tokenizer import train_tokenizer_task


class TokenizerConfig(Config):
    """Train a BPE tokenizer on a corpus stage."""

    model_config = ConfigDict(hide_input_in_errors=True)  # never echo a root URL with credentials

    input: StageRef = Field(
        description=(
            "Corpus stage manifest (or its directory, or `minhash@latest`): "
            "Parquet shards with a text column, e.g. the final dedup stage"
        )
    )
    root: str = Field(
        "outputs",
        description=(
            "Artifact root; the tokenizer goes to `<root>/tokenizer/<fingerprint>/`; "
            "a local directory or a URL such as `s3://bucket/prefix`"
        ),
    )
    vocab_size: int = Field(
        10_000, ge=257, le=1 << 20, description="Vocabulary size: 256 bytes + special tokens + merges"
    )
    special_tokens: list[str] = Field(
        default_factory=lambda: [EOT],
        max_length=1024,
        description="Special tokens (never merged); `<|endoftext|>` separates documents",
    )
    sample_bytes: int = Field(
        100_000_000, gt=0, le=1 << 40, description="Training sample budget in bytes, taken evenly across corpus shards"
    )
    heldout_fraction: float = Field(
        0.01, ge=0.0, lt=1.0, description="Fraction of documents (by hash) held out to measure bytes per token"
    )
    heldout_bytes: int = Field(1_000_000, ge=0, le=1 << 40, description="At most this many bytes of held-out documents")
    text_field: str = Field(
        "text", min_length=1, description="Column of the corpus shards that holds the document text"
    )
    num_workers: int | None = Field(
        None, ge=1, le=1024, description="Pre-tokenization processes (default: all cores for samples over 8 MB)"
    )

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return check_root(v)

    @model_validator(mode="after")
    def _check(self):
        if self.vocab_size < 256 + len(set(self.special_tokens)):
            raise ValueError(
                f"vocab_size={self.vocab_size} must be at least 256 + {len(set(self.special_tokens))} special tokens"
            )
        if any(not s for s in self.special_tokens):
            raise ValueError("special_tokens must not contain an empty string")
        return self


def tokenizer_markdown(manifest_path: str | Path) -> str:
    """Summary of a trained tokenizer for the UI, with a token-length histogram."""
    m = read_manifest(manifest_path)
    s = m["summary"]
    d = as_path(manifest_path).parent
    md = [
        "## Tokenizer",
        markdown_table(
            [
                {"field": "vocab size", "value": s["vocab_size"]},
                {"field": "merges", "value": s["num_merges"]},
                {"field": "bytes per token (held-out)", "value": s["bytes_per_token"]},
                {"field": "held-out documents", "value": s["heldout_docs"]},
                {"field": "training sample bytes", "value": m["counts"]["sample_bytes"]},
                {
                    "field": "train seconds (pre-tokenize + merge)",
                    "value": f"{s['train_stats'].get('pretokenize_seconds')} + {s['train_stats'].get('merge_seconds')}",
                },
            ]
        ),
        "**Longest tokens:** " + ", ".join(f"`{t!r}`" for t in s["longest_tokens"]),
        "",
        "**First merges:** " + ", ".join(s["first_merges"]),
        "",
    ]
    # Drawn locally (the artifact embeds it), uploaded afterwards when the root is remote.
    png = (d if isinstance(d, Path) else local_scratch("lmpipe-tokenizer-plot-")) / "token_lengths.png"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from lm.tokenizer import Tokenizer

        lengths = [len(t) for t in Tokenizer.load(local_tokenizer_dir(d)).vocab.values()]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(lengths, bins=range(1, max(lengths) + 2))
        ax.set_xlabel("token length (bytes)")
        ax.set_ylabel("tokens")
        fig.tight_layout()
        fig.savefig(png)
        plt.close(fig)
        md.append(image_markdown(png, "token lengths"))
        if isinstance(d, RemotePath):
            commit_file(png, d / "token_lengths.png")
    except ImportError:
        pass
    return "\n".join(md)


@flow(name="tokenizer", log_prints=True)
def tokenizer_flow(config: TokenizerConfig) -> str:
    """Train the tokenizer; returns the tokenizer directory's manifest path."""
    read_manifest(config.input)  # a missing or broken input fails before any work
    params = config.model_dump(exclude={"input", "root"})
    path = train_tokenizer_task(config.root, str(config.input), params)
    publish_stage(path, extra_md=tokenizer_markdown(path))
    print(f"tokenizer: {as_path(path).parent}")
    return path
