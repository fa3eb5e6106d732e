"""Batches of token windows from memory-mapped token shards (the tokenize stage's output).

A token-shard directory holds ``_manifest.json`` (read with ``lm.data.shards.read_manifest``)
whose ``shards`` entries have ``name``, ``split`` ("train"/"val") and ``tokens``, plus top-level
``dtype`` ("uint16"/"uint32"), ``vocab_size``, ``eot_id`` and ``tokenizer``. Each shard is a raw
little-endian array: ``np.memmap(path, dtype=dtype, mode="r")``.

Sampling is random windows (as in CS336 / nanoGPT); its only state is a ``numpy.random.Generator``
whose ``bit_generator.state`` is plain JSON, so a checkpoint records the exact data position.
Distributed training gives each rank its own generator (seed, rank) — see ``sampler``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from lm.data.shards import ShardCorruptError, file_sha256, read_manifest


class BadDeviceError(ValueError, RuntimeError):
    """A device string torch cannot use here (both a ValueError and the RuntimeError torch raises)."""


def check_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)  # raises when the device is absent (e.g. cuda:7 on a 1-GPU box)
    except (RuntimeError, AssertionError, TypeError) as e:
        raise BadDeviceError(f"device {device!r} is not usable here ({e}); use 'cpu', 'cuda', 'cuda:N' or 'mps'") from e
    return dev


def get_batch(
    dataset: npt.NDArray, batch_size: int, context_length: int, device: str | torch.device, rng: np.random.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``context_length`` tokens and their next-token targets.

    dataset (N,) ints -> x, y (batch_size, context_length) int64 on ``device``.
    """
    dev = check_device(device)
    n = len(dataset)
    if n < context_length + 1:
        raise ValueError(f"dataset has {n} tokens; need at least context_length+1={context_length + 1}")
    rng = rng if rng is not None else np.random.default_rng()
    starts = rng.integers(0, n - context_length, size=batch_size)
    windows = np.stack([np.asarray(dataset[s : s + context_length + 1], dtype=np.int64) for s in starts])  # (B, T+1)
    t = torch.from_numpy(windows)
    if dev.type == "cuda":
        t = t.pin_memory().to(dev, non_blocking=True)
    else:
        t = t.to(dev)
    return t[:, :-1], t[:, 1:]


class TokenShards:
    """The train or val shards of a token-shard directory, as memmaps, validated against a vocab size."""

    def __init__(self, manifest_dir: str | Path, split: str, vocab_size: int | None = None):
        m = read_manifest(manifest_dir)
        self.manifest = m
        self.dir = Path(m["_path"]).parent
        dtype = m.get("dtype", "uint16")
        if dtype not in ("uint16", "uint32"):
            raise ValueError(f"token shard dtype {dtype!r} in {self.dir} is not uint16 or uint32")
        entries = [s for s in m["shards"] if s.get("split", "train") == split]
        if not entries:
            raise ValueError(f"no {split!r} shards in {self.dir} (splits present: {sorted({s.get('split') for s in m['shards']})})")
        self.arrays: list[np.memmap] = []
        for s in entries:
            path = self.dir / s["name"]
            if not path.exists():
                raise FileNotFoundError(f"token shard {path} listed in the manifest is missing")
            if s.get("sha256") and file_sha256(path) != s["sha256"]:
                raise ShardCorruptError(
                    f"token shard {path} does not match the sha256 in {self.dir / '_manifest.json'} (corrupted or "
                    "changed after the stage finished); rerun the tokenize stage: it recomputes the damaged shard"
                )
            arr = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
            if "tokens" in s and len(arr) != s["tokens"]:
                raise ValueError(f"token shard {path} holds {len(arr)} tokens, the manifest says {s['tokens']}: truncated or wrong dtype")
            self.arrays.append(arr)
        self.vocab_size = vocab_size
        if vocab_size is not None:
            for s, arr in zip(entries, self.arrays):
                top = int(arr.max()) if len(arr) else -1
                if top >= vocab_size:
                    raise ValueError(
                        f"token shard {self.dir / s['name']} holds token id {top} ≥ model vocab_size={vocab_size}; "
                        f"the model's vocab_size must cover the tokenizer (manifest vocab_size={m.get('vocab_size')})"
                    )
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def get_batch(self, batch_size: int, context_length: int, device, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows drawn from shards in proportion to their usable length."""
        usable = np.maximum(self.lengths - context_length, 0)
        if usable.sum() == 0:
            raise ValueError(f"every shard in {self.dir} is shorter than context_length+1={context_length + 1} tokens")
        if len(self.arrays) == 1:
            return get_batch(self.arrays[0], batch_size, context_length, device, rng)
        which = rng.choice(len(self.arrays), size=batch_size, p=usable / usable.sum())
        xs, ys = [], []
        for i in range(len(self.arrays)):
            k = int((which == i).sum())
            if k:
                x, y = get_batch(self.arrays[i], k, context_length, device, rng)
                xs.append(x)
                ys.append(y)
        return torch.cat(xs), torch.cat(ys)


def sampler(seed: int, rank: int = 0) -> np.random.Generator:
    """The data RNG of one rank: independent streams per rank from one seed."""
    return np.random.default_rng([seed, rank])


def write_token_shards(
    out_dir: str | Path,
    splits: dict[str, list[np.ndarray]],
    *,
    vocab_size: int,
    eot_id: int | None = None,
    tokenizer: str | None = None,
    stage: str = "tokenize",
    fingerprint: str = "manual",
) -> Path:
    """Write token arrays as a token-shard directory (the tokenize stage's layout); returns the manifest path.

    ``splits`` maps "train"/"val" to a list of 1-D int arrays, one shard each. For tests and
    byte-level demos; real pipelines get these directories from the tokenize stage.
    """
    import hashlib
    import os

    from lm.data.shards import _canonical_json, atomic_write_json, reraise_disk_full

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = "uint16" if vocab_size <= 65536 else "uint32"
    shards = []
    for split, arrays in splits.items():
        for i, arr in enumerate(arrays):
            name = f"{split}-{i:05d}.bin"
            tmp = out / f".{name}.{os.getpid()}.tmp"  # renamed into place whole, never half-written
            try:
                with reraise_disk_full(out / name):
                    with open(tmp, "wb") as f:  # not tofile: its short write loses the errno (ENOSPC)
                        f.write(np.ascontiguousarray(np.asarray(arr).astype(np.dtype(dtype).newbyteorder("<"))).data)
                shards.append({"name": name, "split": split, "tokens": int(len(arr)), "bytes": tmp.stat().st_size,
                               "sha256": file_sha256(tmp)})
                os.replace(tmp, out / name)
            finally:
                tmp.unlink(missing_ok=True)
    total = sum(s["tokens"] for s in shards)
    manifest = {
        "stage": stage, "fingerprint": fingerprint, "config": {}, "inputs": [], "shards": shards,
        "counts": {"in": total, "kept": total, "rejected": {}, "failed": {}},
        "dtype": dtype, "vocab_size": vocab_size, "eot_id": eot_id, "tokenizer": tokenizer,
    }
    manifest["manifest_sha256"] = hashlib.sha256(_canonical_json(manifest).encode()).hexdigest()
    atomic_write_json(out / "_manifest.json", manifest)
    return out / "_manifest.json"


def byte_tokens(text: str, eot: str = "<|endoftext|>", eot_id: int = 256) -> np.ndarray:
    """UTF-8 bytes as ids 0..255 with ``eot`` markers mapped to ``eot_id`` (a 257-token vocabulary)."""
    parts = [np.frombuffer(p.encode("utf-8"), dtype=np.uint8).astype(np.int64) for p in text.split(eot)]
    out = []
    for i, p in enumerate(parts):
        if i:
            out.append(np.array([eot_id]))
        out.append(p)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
