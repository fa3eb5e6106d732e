"""Batches of token windows from memory-mapped token shards (the tokenize stage's output).

A token-shard directory holds ``_manifest.json`` (read with ``lm.data.manifest.Manifest``)
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

from lm.data.manifest import Manifest
from lm.data.shards import Stage
from lm.data.sinks import token_dtype, token_layout


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
    dataset: npt.NDArray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    rng: np.random.Generator | None = None,
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
    """The train or val shards of a token-shard directory, as memmaps, validated against a vocab size.

    The directory may be remote (``s3://…``): each shard is then memory-mapped from its copy in
    the local cache (``$LMPIPE_CACHE/artifacts``, keyed and verified by the manifest's sha256)."""

    def __init__(self, manifest_dir: str | Path, split: str, vocab_size: int | None = None):
        m = Manifest.read(manifest_dir)
        self.manifest = m
        self.dir = m.dir
        dtype = m.extra.get("dtype", "uint16")
        if dtype not in ("uint16", "uint32"):
            raise ValueError(f"token shard dtype {dtype!r} in {self.dir} is not uint16 or uint32")
        entries = [(i, s) for i, s in enumerate(m.shards) if (s.split or "train") == split]
        if not entries:
            raise ValueError(
                f"no {split!r} shards in {self.dir} (splits present: {sorted({s.split for s in m.shards}, key=str)})"
            )
        self.arrays: list[np.memmap] = []
        for i, s in entries:
            path = m.local_shard(i)  # sha256-verified; a remote shard is verified as it downloads into the cache
            arr = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
            if s.num_tokens is not None and len(arr) != s.num_tokens:
                raise ValueError(
                    f"token shard {path} holds {len(arr)} tokens, the "
                    f"manifest says {s.num_tokens}: truncated or wrong dtype"
                )
            self.arrays.append(arr)
        self.vocab_size = vocab_size
        if vocab_size is not None:
            for (_, s), arr in zip(entries, self.arrays):
                top = int(arr.max()) if len(arr) else -1
                if top >= vocab_size:
                    raise ValueError(
                        f"token shard {self.dir / s.name} holds token id {top} ≥ model vocab_size={vocab_size}; "
                        "the model's vocab_size must cover the tokenizer "
                        f"(manifest vocab_size={m.extra.get('vocab_size')})"
                    )
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def get_batch(
        self, batch_size: int, context_length: int, device, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
    """Write token arrays as a token-shard directory (the tokenize stage's layout, through the
    same shard writer and manifest); returns the manifest path.

    ``splits`` maps "train"/"val" to a list of 1-D int arrays: array ``i`` of each split is shard
    ``i``. ``out_dir`` plays ``<root>/<stage>/<fingerprint>`` (its root holds the signing key).
    For tests and byte-level demos; real pipelines get these directories from the tokenize stage.
    """
    st = Stage.at(out_dir, name=stage, fingerprint=fingerprint)
    dtype = token_dtype(vocab_size)
    num_shards = max((len(arrays) for arrays in splits.values()), default=0)
    for i in range(num_shards):
        present = tuple(s for s, arrays in splits.items() if i < len(arrays))
        with st.open_shard(i, layout=token_layout(dtype, present)) as w:
            for s in present:
                w.count_in()
                w.write(splits[s][i], to=s)
                w.add_count(f"tokens_{s}", len(splits[s][i]))
    return st.commit(
        num_shards=num_shards,
        extra={"dtype": dtype.name, "vocab_size": vocab_size, "eot_id": eot_id, "tokenizer": tokenizer},
    )


def byte_tokens(text: str, eot: str = "<|endoftext|>", eot_id: int = 256) -> np.ndarray:
    """UTF-8 bytes as ids 0..255 with ``eot`` markers mapped to ``eot_id`` (a 257-token vocabulary)."""
    parts = [np.frombuffer(p.encode("utf-8"), dtype=np.uint8).astype(np.int64) for p in text.split(eot)]
    out = []
    for i, p in enumerate(parts):
        if i:
            out.append(np.array([eot_id]))
        out.append(p)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
