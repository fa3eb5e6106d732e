"""The two pipeline stages of the tokenizer, as plain functions (the Prefect tasks wrap them).

``tokenizer`` stage: corpus manifest (Parquet shards with a ``text`` column) → a tokenizer
directory ``<root>/tokenizer/<fingerprint>/`` holding ``vocab.json``, ``merges.txt``,
``tokenizer_config.json``, ``tokenizer.json`` (Hugging Face), ``tokenizer.tiktoken`` (ranks)
and ``_manifest.json`` (no shards; counts of documents sampled; a summary: vocab size,
bytes/token on held-out documents, longest tokens, first merges).

``tokenize`` stage: corpus manifest + tokenizer directory → ``<root>/tokenize/<fingerprint>/``
``train-NNNNN.bin`` / ``val-NNNNN.bin`` per corpus shard: raw little-endian uint16 (uint32
when the vocab exceeds 65,536) token ids, each document followed by ``<|endoftext|>``,
documents assigned to val by a hash of their id (or text). Each corpus shard is written
atomically with a ``part-NNNNN.done.json`` marker; ``commit_tokenize`` writes the manifest.

Both work on a remote root (``s3://…``, see ``lm.data.storage``): files are built in a local
scratch directory and committed by upload + copy; remote corpus shards and tokenizers are read
through the local cache (``$LMPIPE_CACHE/artifacts``, keyed by sha256).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lm.data.shards import (
    MANIFEST_NAME, ShardCorruptError, Stage, file_sha256, manifest_dir, read_manifest, read_marker,
    reraise_disk_full, fault_pause, write_marker,
)
from lm.data.storage import RemotePath, as_path, cache_dir, commit_file, local_copy, local_scratch
from lm.tokenizer.export import export_hf_tokenizer_json, export_tiktoken_ranks
from lm.tokenizer.gpt2 import EOT
from lm.tokenizer.tokenizer import Tokenizer
from lm.tokenizer.train import check_vocab_size, train_bpe

TOKENIZER_VERSION = "1"
TOKENIZE_VERSION = "1"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "tokenizer.tiktoken")
BATCH_DOCS = 512  # documents encoded per batch: bounds memory per shard


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def doc_fraction(key: str) -> float:
    """A stable number in [0, 1) from a document's id or text (for held-out / val splits)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") / 2**64


def _corpus_shard(manifest: dict, index: int) -> Path:
    """A local, checksum-verified file of corpus shard ``index`` (remote shards: the cached copy)."""
    s = manifest["shards"][index]
    path = manifest_dir(manifest) / s["name"]
    if isinstance(path, RemotePath):
        try:
            return local_copy(path, s.get("sha256"))
        except FileNotFoundError:
            raise FileNotFoundError(f"corpus shard {path} listed in {manifest['_path']} does not exist") from None
    if not path.exists():
        raise FileNotFoundError(f"corpus shard {path} listed in {manifest['_path']} does not exist")
    if s.get("sha256") and file_sha256(path) != s["sha256"]:
        raise ShardCorruptError(f"corpus shard {path} does not match the checksum in its manifest; rerun the stage that wrote it")
    return path


def iter_shard_docs(manifest: dict, index: int, text_field: str, id_field: str = "id") -> Iterator[list[tuple[str | None, object]]]:
    """Batches of (id, text) from corpus shard ``index``, streamed (one row group at a time)."""
    path = _corpus_shard(manifest, index)
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


def sample_corpus(manifest: dict, out_path: Path, *, sample_bytes: int, heldout_fraction: float, heldout_bytes: int, text_field: str) -> tuple[Counter, list[str]]:
    """Write up to ``sample_bytes`` of documents (each + EOT) to ``out_path``, spread evenly
    over the shards; set aside held-out documents. Returns (counts, held-out texts)."""
    counts: Counter = Counter()
    heldout: list[str] = []
    held = 0
    num_shards = len(manifest["shards"])
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
    manifest = read_manifest(corpus_manifest)
    stage.ensure_dir()
    # A remote stage is built in a local directory, then uploaded file by file.
    out = stage.path if isinstance(stage.path, Path) else local_scratch("lmpipe-tokenizer-")
    t0 = time.time()
    for stale in stage.path.glob(".sample-*.txt"):  # left by a run that was killed while training
        stale.unlink(missing_ok=True)
    sample = out / f".sample-{os.getpid()}.txt"
    try:
        counts, heldout = sample_corpus(manifest, sample, sample_bytes=sample_bytes, heldout_fraction=heldout_fraction, heldout_bytes=heldout_bytes, text_field=text_field)
        if counts["kept"] == 0:
            raise ValueError(f"corpus {manifest['_path']} has no non-empty {text_field!r} documents to train on")
        stats: dict = {}
        fault_pause(0)  # fault-injection hook (tests/reliability): a kill here leaves the sample file
        vocab, merges = train_bpe(sample, vocab_size, special_tokens, num_workers=num_workers, stats=stats)
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
    fault_pause(1)  # fault-injection hook: a kill here leaves tokenizer files without a manifest
    return stage.write_manifest(
        shards=[],
        counts={"in": counts["in"], "kept": counts["kept"], "rejected": rejected, "failed": failed,
                "sample_bytes": counts["sample_bytes"], "replaced_bytes": stats.get("replaced", 0)},
        timings={"total_seconds": round(time.time() - t0, 3)},
        extra={
            "files": {"vocab": "vocab.json", "merges": "merges.txt", "config": "tokenizer_config.json", "hf": "tokenizer.json", "tiktoken": "tokenizer.tiktoken"},
            # checked by Stage.is_complete (a damaged file retrains) and load_stage_tokenizer
            "files_sha256": {f: file_sha256(stage.path / f) for f in TOKENIZER_FILES},
            "summary": summary,
        },
    )


# --------------------------------------------------------------------------- tokenize stage


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65_536 else np.dtype("<u4")


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


def tokenize_shard_done(stage: Stage, index: int) -> bool:
    marker = stage.marker_path(index)
    if not marker.exists():
        return False
    try:
        m = read_marker(marker)
        # size first (cheap), then the checksum: a flipped byte redoes the shard
        return all((stage.path / o["name"]).exists() and (stage.path / o["name"]).stat().st_size == o["bytes"]
                   and (not o.get("sha256") or file_sha256(stage.path / o["name"]) == o["sha256"]) for o in m["outputs"])
    except (ShardCorruptError, ValueError, KeyError):
        return False


def tokenize_shard(stage: Stage, corpus_manifest: str | os.PathLike, tokenizer: Tokenizer, index: int, *, val_fraction: float, text_field: str, num_threads: int = 2) -> Path:
    """Tokenize corpus shard ``index`` into train/val ``.bin`` files and their marker."""
    if tokenize_shard_done(stage, index):
        return stage.marker_path(index)
    manifest = read_manifest(corpus_manifest)
    stage.ensure_dir()
    scratch = stage.path if isinstance(stage.path, Path) else local_scratch("lmpipe-tokens-")
    dtype = token_dtype(tokenizer.vocab_size)
    eot = tokenizer.eot_id
    t0 = time.time()
    counts: Counter = Counter()
    splits = {"train": {"tokens": 0, "docs": 0}, "val": {"tokens": 0, "docs": 0}}
    # A run killed mid-shard leaves hidden temporaries (other pid): one writer per shard, clear them.
    for pattern in (f".*-{index:05d}.bin.*.tmp", f".{stage.marker_path(index).name}.*.tmp"):
        for stale in stage.path.glob(pattern):
            stale.unlink(missing_ok=True)
    tmps = {s: scratch / f".{s}-{index:05d}.bin.{os.getpid()}.tmp" for s in splits}
    files = {s: open(p, "wb") for s, p in tmps.items()}
    try:
        for batch in iter_shard_docs(manifest, index, text_field):
            keep = []
            for doc_id, text in batch:
                counts["in"] += 1
                if not isinstance(text, str):
                    counts["failed:not_text"] += 1
                elif not text.strip():
                    counts["rejected:empty"] += 1
                else:
                    split = "val" if doc_fraction(str(doc_id) if doc_id is not None else text) < val_fraction else "train"
                    keep.append((split, text))
            for (split, _), ids in zip(keep, tokenizer.encode_batch([t for _, t in keep], num_threads=num_threads)):
                ids.append(eot)
                arr = np.asarray(ids, dtype=dtype)  # ids < vocab_size fit the dtype
                with reraise_disk_full(stage.path / f"{split}-{index:05d}.bin"):
                    files[split].write(arr.data)  # not tofile: its short write loses the errno (ENOSPC)
                splits[split]["tokens"] += len(ids)
                splits[split]["docs"] += 1
                counts["kept"] += 1
        fault_pause(index)  # fault-injection hook (tests/reliability): a kill here leaves only temporaries
        outputs = []
        for split, f in files.items():
            with reraise_disk_full(stage.path / f"{split}-{index:05d}.bin"):
                f.flush()
                os.fsync(f.fileno())
                f.close()
            if splits[split]["tokens"] == 0:
                tmps[split].unlink()  # an empty file cannot be memory-mapped: leave it out
                continue
            final = stage.path / f"{split}-{index:05d}.bin"
            digest, size = file_sha256(tmps[split]), tmps[split].stat().st_size
            commit_file(tmps[split], final)
            outputs.append({"name": final.name, "index": index, "split": split, **splits[split], "bytes": size, "sha256": digest})
    except BaseException:
        for f in files.values():
            f.close()
        for p in tmps.values():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        raise
    finally:
        if scratch != stage.path:
            with contextlib.suppress(OSError):
                scratch.rmdir()
    marker = {
        "index": index,
        "source": manifest["shards"][index]["name"],
        "outputs": outputs,
        "rows_in": counts["in"],
        "kept": counts["kept"],
        "rejected": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("rejected:")},
        "failed": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("failed:")},
        "seconds": round(time.time() - t0, 4),
        "finished_at": _now(),
    }
    write_marker(stage.marker_path(index), marker)
    return stage.marker_path(index)


def commit_tokenize(stage: Stage, num_shards: int, tokenizer_dir: str | os.PathLike, tokenizer: Tokenizer) -> Path:
    """Aggregate the shard markers into ``_manifest.json`` (refuses if a shard is missing)."""
    markers = []
    for i in range(num_shards):
        if not tokenize_shard_done(stage, i):
            raise RuntimeError(f"tokenize stage at {stage.path}: shard {i} not finished; rerun to complete it")
        markers.append(read_marker(stage.marker_path(i)))
    rejected: Counter = Counter()
    failed: Counter = Counter()
    for m in markers:
        rejected.update(m["rejected"])
        failed.update(m["failed"])
    shards = [o for m in markers for o in m["outputs"]]
    return stage.write_manifest(
        shards=shards,
        counts={
            "in": sum(m["rows_in"] for m in markers),
            "kept": sum(m["kept"] for m in markers),
            "rejected": rejected,
            "failed": failed,
            "tokens_train": sum(s["tokens"] for s in shards if s["split"] == "train"),
            "tokens_val": sum(s["tokens"] for s in shards if s["split"] == "val"),
        },
        timings={"shard_seconds": {str(m["index"]): m["seconds"] for m in markers}},
        extra={
            "dtype": token_dtype(tokenizer.vocab_size).name,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "tokenizer": str(as_path(tokenizer_dir).resolve()),
        },
    )
