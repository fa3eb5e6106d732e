"""The two pipeline stages of the tokenizer, as plain functions (the Prefect tasks wrap them).

``tokenizer`` stage: corpus manifest (Parquet shards with a ``text`` column) → a tokenizer
directory ``<root>/tokenizer/<fingerprint>/`` holding ``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``tokenizer.json`` (Hugging Face), ``tokenizer.tiktoken`` (ranks)
and ``_manifest.json`` (no shards; counts of documents sampled; a summary: vocab size,
bytes/token on held-out documents, longest tokens, first merges).

``tokenize`` stage: corpus manifest + tokenizer directory → ``<root>/tokenize/<fingerprint>/``
``train-NNNNN.bin`` / ``val-NNNNN.bin`` per corpus shard: raw little-endian uint16 (uint32
when the vocab exceeds 65,536) token ids, each document followed by ``<|endoftext|>``,
documents assigned to val by a hash of their id (or text). Each corpus shard is written by the
stage's shard writer with the token layout (``lm.data.sinks.token_layout``): whole files, then a
``part-NNNNN.done.json`` marker; ``commit_tokenize`` writes the manifest (``Stage.commit``).

Both work on a remote root (``s3://…``, see ``lm.data.storage``): files are built in a local
scratch directory and committed by upload + copy; remote corpus shards and tokenizers are read
through the local cache (``$LMPIPE_CACHE/artifacts``, keyed by sha256).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from lm import faults
from lm.data.manifest import Manifest
from lm.data.nospace import reraise_disk_full
from lm.data.shards import Stage
from lm.data.sinks import token_dtype, token_layout
from lm.data.stage_io import MANIFEST_NAME
from lm.cache import cache_dir
from lm.data.storage import as_path, commit_file, file_sha256, local_scratch
from lm.tokenizer.export import export_hf_tokenizer_json, export_tiktoken_ranks
from lm.tokenizer.gpt2 import EOT
from lm.tokenizer.tokenizer import Tokenizer
from lm.tokenizer.train import check_vocab_size, train_bpe

TOKENIZER_VERSION = "1"
TOKENIZE_VERSION = "1"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "tokenizer.tiktoken")
BATCH_DOCS = 512  # documents encoded per batch: bounds memory per shard


def doc_fraction(key: str) -> float:
    """A stable number in [0, 1) from a document's id or text (for held-out / val splits)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") / 2**64


def iter_shard_docs(manifest: Manifest, index: int, text_field: str, id_field: str = "id") -> Iterator[list[tuple[str | None, object]]]:
    """Batches of (id, text) from corpus shard ``index`` (sha256-verified first; a remote shard
    through the local cache), streamed one row group at a time."""
    path = manifest.local_shard(index)
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"corpus shard {path} has no column {text_field!r} (columns: {names}); set text_field")
    cols = [text_field] + ([id_field] if id_field in names else [])
    for batch in pf.iter_batches(columns=cols, batch_size=BATCH_DOCS):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if len(cols) > 1 else [None] * len(texts)
        yield list(zip(ids, texts))


# --------------------------------------------------------------------------- tokenizer stage


def tokenizer_stage(root: str | os.PathLike, corpus_manifest: str | os.PathLike, config: dict) -> Stage:
    return Stage(root, "tokenizer", version=TOKENIZER_VERSION, config=config, inputs=[corpus_manifest])


def sample_corpus(manifest: Manifest, out_path: Path, *, sample_bytes: int, heldout_fraction: float, heldout_bytes: int, text_field: str) -> tuple[Counter, list[str]]:
    """Write up to ``sample_bytes`` of documents (each + EOT) to ``out_path``, spread evenly
    over the shards; set aside held-out documents. Returns (counts, held-out texts)."""
    counts: Counter = Counter()
    heldout: list[str] = []
    held = 0
    num_shards = manifest.num_shards
    quota = -(-sample_bytes // max(num_shards, 1))
    with open(out_path, "wb") as out:
        for i in range(num_shards):
            taken = 0
            for batch in iter_shard_docs(manifest, i, text_field):
                for doc_id, text in batch:
                    counts["in"] += 1
                    if not isinstance(text, str):
                        counts["failed:not_text"] += 1
                    elif not text.strip():
                        counts["rejected:empty"] += 1
                    elif held < heldout_bytes and doc_fraction(str(doc_id) if doc_id is not None else text) < heldout_fraction:
                        heldout.append(text)
                        held += len(text.encode("utf-8", "replace"))
                        counts["rejected:heldout"] += 1
                    elif taken >= quota:
                        counts["rejected:over_budget"] += 1
                    else:
                        data = text.encode("utf-8", "replace") + EOT.encode()
                        out.write(data)
                        taken += len(data)
                        counts["kept"] += 1
                        counts["sample_bytes"] += len(data)
                if taken >= quota and held >= heldout_bytes:
                    break  # this shard gave its share; rows not read are not counted
    return counts, heldout


def train_tokenizer_stage(
    root: str | os.PathLike,
    corpus_manifest: str | os.PathLike,
    *,
    vocab_size: int,
    special_tokens: Sequence[str],
    sample_bytes: int,
    heldout_fraction: float = 0.01,
    heldout_bytes: int = 1_000_000,
    text_field: str = "text",
    num_workers: int | None = None,
) -> Path:
    """Sample the corpus, train BPE, save the tokenizer directory with its manifest."""
    special_tokens = list(dict.fromkeys(special_tokens))
    check_vocab_size(vocab_size, special_tokens)
    config = {
        "vocab_size": vocab_size,
        "special_tokens": special_tokens,
        "sample_bytes": sample_bytes,
        "heldout_fraction": heldout_fraction,
        "heldout_bytes": heldout_bytes,
        "text_field": text_field,
    }
    stage = tokenizer_stage(root, corpus_manifest, config)
    if stage.is_complete():
        return stage.manifest_path
    stage.ensure_dir()
    with stage.lock():  # one writer: another run's sample file and temporaries are left alone
        if stage.is_complete():  # the run we waited for finished it
            return stage.manifest_path
        return _build_tokenizer(stage, Manifest.read(corpus_manifest), config, num_workers)


def _build_tokenizer(stage: Stage, manifest: Manifest, config: dict, num_workers: int | None) -> Path:
    special_tokens, text_field = config["special_tokens"], config["text_field"]
    # A remote stage is built in a local directory, then uploaded file by file.
    out = stage.path if isinstance(stage.path, Path) else local_scratch("lmpipe-tokenizer-")
    t0 = time.time()
    for stale in stage.path.glob(".sample-*.txt"):  # left by a run that was killed while training
        stale.unlink(missing_ok=True)
    sample = out / f".sample-{os.getpid()}.txt"
    try:
        counts, heldout = sample_corpus(manifest, sample, sample_bytes=config["sample_bytes"], heldout_fraction=config["heldout_fraction"],
                                        heldout_bytes=config["heldout_bytes"], text_field=text_field)
        if counts["kept"] == 0:
            raise ValueError(f"corpus {manifest.path} has no non-empty {text_field!r} documents to train on")
        stats: dict = {}
        faults.shard_pause(0)  # fault-injection hook (tests/reliability): a kill here leaves the sample file
        vocab, merges = train_bpe(sample, config["vocab_size"], special_tokens, num_workers=num_workers, stats=stats)
    finally:
        with contextlib.suppress(FileNotFoundError):
            sample.unlink()
    tok = Tokenizer(vocab, merges, special_tokens)
    # Written in a hidden local directory, then renamed (local root) or uploaded by temporary
    # key + copy (remote root) into place file by file: a failed write (disk full, say)
    # leaves no half-written vocab.json under its final name.
    tmp = out / f".files-{os.getpid()}.tmp"
    try:
        with reraise_disk_full(tmp / "vocab.json"):
            tok.save(tmp)
            export_hf_tokenizer_json(tok, tmp / "tokenizer.json")
            export_tiktoken_ranks(tok, tmp / "tokenizer.tiktoken")
        for f in TOKENIZER_FILES:
            commit_file(tmp / f, stage.path / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if out != stage.path:
            shutil.rmtree(out, ignore_errors=True)

    held_bytes = sum(len(t.encode("utf-8")) for t in heldout)
    held_tokens = sum(len(ids) for ids in tok.encode_batch(heldout)) if heldout else 0
    by_len = sorted(tok.vocab.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    summary = {
        "vocab_size": tok.vocab_size,
        "num_merges": len(merges),
        "eot_id": tok.eot_id,
        "heldout_docs": len(heldout),
        "heldout_bytes": held_bytes,
        "bytes_per_token": round(held_bytes / held_tokens, 4) if held_tokens else None,
        "longest_tokens": [tok.decode([i]) for i, t in by_len[:20] if t not in {s.encode() for s in special_tokens}][:15],
        "first_merges": [f"{a.decode('utf-8', 'replace')!r} + {b.decode('utf-8', 'replace')!r}" for a, b in merges[:20]],
        "train_stats": stats,
    }
    rejected = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("rejected:")}
    failed = {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("failed:")}
    faults.shard_pause(1)  # fault-injection hook: a kill here leaves tokenizer files without a manifest
    return stage.write_manifest(
        shards=[],
        counts={"in": counts["in"], "kept": counts["kept"], "rejected": rejected, "failed": failed,
                "sample_bytes": counts["sample_bytes"], "replaced_bytes": stats.get("replaced", 0)},
        timings={"total_seconds": round(time.time() - t0, 3)},
        extra={
            "files": {"vocab": "vocab.json", "merges": "merges.txt", "config": "tokenizer_config.json", "hf": "tokenizer.json", "tiktoken": "tokenizer.tiktoken"},
            # checked by Stage.is_complete (a damaged file retrains) and load_stage_tokenizer
            "files_sha256": {f: file_sha256(stage.path / f, follow_links=False) for f in TOKENIZER_FILES},
            "summary": summary,
        },
    )


# --------------------------------------------------------------------------- tokenize stage


def tokenize_stage(root: str | os.PathLike, corpus_manifest: str | os.PathLike, tokenizer_dir: str | os.PathLike, *, val_fraction: float, text_field: str) -> Stage:
    """The tokenize stage's directory; its fingerprint covers the corpus and the tokenizer."""
    tdir = as_path(tokenizer_dir)
    if not (tdir.is_dir() if isinstance(tdir, Path) else (tdir / "vocab.json").exists()):
        raise FileNotFoundError(f"tokenizer directory {tdir} does not exist; run the tokenizer flow first")
    inputs = [corpus_manifest]
    config = {"val_fraction": val_fraction, "text_field": text_field}
    if (tdir / MANIFEST_NAME).exists():
        inputs.append(tdir / MANIFEST_NAME)
    else:  # a tokenizer saved by hand: its files identify it
        config["tokenizer_sha256"] = {f: file_sha256(tdir / f) for f in ("vocab.json", "merges.txt", "tokenizer_config.json")}
    return Stage(root, "tokenize", version=TOKENIZE_VERSION, config=config, inputs=inputs)


LOAD_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")  # what Tokenizer.load reads


def local_tokenizer_dir(tokenizer_dir: str | os.PathLike) -> Path:
    """A local directory holding the tokenizer's files: itself when local; for a remote one, a
    copy under ``$LMPIPE_CACHE/artifacts/tokenizers/`` (refreshed on each call: three small files)."""
    d = as_path(tokenizer_dir)
    if isinstance(d, Path):
        return d
    target = cache_dir() / "tokenizers" / hashlib.sha256(str(d).encode()).hexdigest()[:16]
    target.mkdir(parents=True, exist_ok=True)
    for name in LOAD_FILES:
        src = d / name
        if not src.exists():
            raise FileNotFoundError(f"tokenizer directory {d} has no {name} (write one with Tokenizer.save or the tokenizer flow)")
        tmp = target / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, target / name)
    return target


def load_stage_tokenizer(tokenizer_dir: str | os.PathLike) -> Tokenizer:
    tok = Tokenizer.load(local_tokenizer_dir(tokenizer_dir))
    if tok.eot_id is None:
        raise ValueError(f"tokenizer {tokenizer_dir} has no {EOT!r} token; the tokenize stage separates documents with it (add it to special_tokens)")
    return tok


def tokenize_shard(stage: Stage, corpus_manifest: str | os.PathLike, tokenizer: Tokenizer, index: int, *, val_fraction: float, text_field: str, num_threads: int = 2) -> Path:
    """Tokenize corpus shard ``index`` into ``train-``/``val-NNNNN.bin`` and its marker (the
    stage's shard writer with the token layout); returns the marker path."""
    if stage.shard_done(index):
        return stage.marker_path(index)
    manifest = Manifest.read(corpus_manifest)
    layout = token_layout(token_dtype(tokenizer.vocab_size))
    with stage.open_shard(index, source=manifest.shards[index].name, layout=layout) as w:
        w.add_count("tokens_train", 0)
        w.add_count("tokens_val", 0)
        for batch in iter_shard_docs(manifest, index, text_field):
            keep = []
            for doc_id, text in batch:
                w.count_in()
                if not isinstance(text, str):
                    w.fail("not_text", None if doc_id is None else str(doc_id))
                elif not text.strip():
                    w.reject(None, "empty")
                else:
                    split = "val" if doc_fraction(str(doc_id) if doc_id is not None else text) < val_fraction else "train"
                    keep.append((split, text))
            for (split, _), ids in zip(keep, tokenizer.encode_batch([t for _, t in keep], num_threads=num_threads)):
                ids.append(tokenizer.eot_id)  # ids < vocab_size fit the dtype
                w.write(ids, to=split)
                w.add_count(f"tokens_{split}", len(ids))
    return stage.marker_path(index)


def commit_tokenize(stage: Stage, num_shards: int, tokenizer_dir: str | os.PathLike, tokenizer: Tokenizer) -> Path:
    """Write the tokenize manifest from the shard markers (refuses if a shard is missing or damaged)."""
    for i in range(num_shards):
        if not stage.shard_done(i):
            raise RuntimeError(f"tokenize stage at {stage.path}: shard {i} not finished; rerun to complete it")
    return stage.commit(num_shards, extra={
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "tokenizer": str(as_path(tokenizer_dir).resolve()),
    })
