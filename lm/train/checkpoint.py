"""Checkpoints as a directory: safetensors for tensors, JSON for everything else; never pickle.

    <dir>/model.safetensors       model weights (a tied tensor stored once; aliases in meta.json)
    <dir>/optimizer.safetensors   optimizer state tensors, keys "state.<param index>.<name>"
    <dir>/meta.json               iteration, model/train config, optimizer non-tensor state and
                                  param groups, RNG states, data position, files' sha256

A checkpoint is written into a temporary sibling directory and renamed into place, so a killed
run leaves either the previous checkpoint or the complete new one. Loading checks each file's
sha256 (a flipped byte → ``CheckpointCorruptError`` naming the file) and compares the stored
weights with the model's keys and shapes (a different model → ``ValueError`` listing them).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lm import faults
from lm.data.nospace import DiskFullError, disk_full_error, no_room_errno
from lm.data.shards import atomic_write_json, file_sha256

META = "meta.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
# what a person can do about a damaged checkpoint (lm.train.resume.usable_checkpoints does it on resume)
_WHAT_TO_DO = "; rerun the training: a damaged newest checkpoint is set aside and training resumes from the one before"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin"}  # torch.save / pickle formats: never loaded


class CheckpointCorruptError(ValueError):
    """A checkpoint file is unreadable or does not match the checksum recorded in meta.json."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage: keep one key per tensor, return alias -> kept key."""
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for k, t in state.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if ident in seen:
            aliases[k] = seen[ident]
        else:
            seen[ident] = k
            out[k] = t.detach().contiguous().cpu()
    return out, aliases


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def rng_state() -> dict:
    """Torch CPU (and CUDA) RNG states as JSON-able values. Not Python's global ``random``:
    training never draws from it (its sampling has its own generators), and other code in the
    process does (Prefect's threads), so its state would differ between identical runs."""
    state = {"torch_cpu": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["torch_cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` recorded (a ``python`` entry of older checkpoints is ignored)."""
    if "torch_cpu" in state:
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch_cpu"])), dtype=torch.uint8))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["torch_cuda"]]
        )


def _optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    iteration: int,
    out: str | os.PathLike,
    *,
    model_config: dict | None = None,
    train_config: dict | None = None,
    data_state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint directory at ``out`` atomically (replacing any previous one there)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        plain = unwrap(model)
        weights, aliases = _dedupe(plain.state_dict())
        save_file(weights, str(tmp / MODEL_FILE))
        faults.inject("checkpoint.model", iteration)  # test-only (lm.faults)
        files = [MODEL_FILE]
        optim_meta = None
        if optimizer is not None:
            tensors, optim_meta = _optimizer_split(optimizer)
            save_file(tensors, str(tmp / OPTIM_FILE))
            files.append(OPTIM_FILE)
        if model_config is None and hasattr(plain, "config"):
            model_config = plain.config.model_dump()
        meta = {
            "iteration": int(iteration),
            "model_config": model_config,
            "train_config": train_config,
            "optimizer": optim_meta,
            "aliases": aliases,
            "rng": rng_state(),
            "data": data_state,
            "extra": extra or {},
            "files": {f: file_sha256(tmp / f) for f in files},
            "saved_at": time.time(),
        }
        meta["meta_sha256"] = _meta_digest(meta)
        atomic_write_json(tmp / META, meta)
        for f in [*files, META]:
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        faults.inject("checkpoint.meta", iteration)
        if out.exists():  # replace: move the old one aside first so a crash never leaves nothing
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, DiskFullError) and no_room_errno(e) is not None:
            raise disk_full_error(out / MODEL_FILE, e) from e  # says what ran out, and where
        raise
    faults.inject("checkpoint.renamed", iteration)
    return out


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def verify_checkpoint(src: str | os.PathLike) -> dict:
    """Check a checkpoint without loading it: meta.json's own checksum and every file's sha256.
    Returns the metadata; raises CheckpointCorruptError (naming the file) or FileNotFoundError."""
    src = Path(src)
    meta = read_checkpoint_meta(src)
    for name, digest in meta.get("files", {}).items():
        if not (src / name).exists():
            raise FileNotFoundError(f"checkpoint file {src / name} is missing")
        if file_sha256(src / name) != digest:
            raise CheckpointCorruptError(
                f"checkpoint file {src / name} does not match the sha256 in {META}: corrupted or truncated{_WHAT_TO_DO}"
            )
    return meta


def read_checkpoint_meta(src: str | os.PathLike) -> dict:
    src = Path(src)
    pickled = sorted(p.name for p in src.glob("*") if p.suffix in PICKLE_SUFFIXES) if src.is_dir() else []
    if pickled and not (src / MODEL_FILE).exists():
        raise ValueError(
            f"refusing to load {src / pickled[0]}: it is a pickle-format checkpoint, and unpickling a file can run "
            "arbitrary code; lmpipe reads weights only as safetensors (model.safetensors + meta.json, written by "
            "save_checkpoint); convert it where you trust it: "
            "safetensors.torch.save_file(torch.load(f, weights_only=True), ...)"
        )
    if not (src / META).exists():
        raise FileNotFoundError(
            f"{src} is not a checkpoint directory (no {META}); expected model.safetensors + meta.json"
        )
    try:
        meta = json.loads((src / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointCorruptError(
            f"checkpoint metadata {src / META} is not valid JSON ({e}): corrupted or truncated{_WHAT_TO_DO}"
        ) from e
    if not isinstance(meta, dict) or ("meta_sha256" in meta and _meta_digest(meta) != meta["meta_sha256"]):
        raise CheckpointCorruptError(
            f"checkpoint metadata {src / META} does not match its checksum: corrupted{_WHAT_TO_DO}"
        )
    return meta


def _load_tensors(src: Path, name: str, meta: dict) -> dict[str, torch.Tensor]:
    path = src / name
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file {path} is missing")
    expected = meta.get("files", {}).get(name)
    if expected is not None and file_sha256(path) != expected:
        raise CheckpointCorruptError(
            f"checkpoint file {path} does not match the sha256 in {META}: corrupted or truncated{_WHAT_TO_DO}"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointCorruptError(f"checkpoint file {path} is not readable safetensors ({e}){_WHAT_TO_DO}") from e


def load_weights(src: str | os.PathLike, model: torch.nn.Module, meta: dict | None = None) -> None:
    """Copy the checkpoint's weights into ``model``; a shape/key mismatch raises listing every key."""
    src = Path(src)
    meta = meta or read_checkpoint_meta(src)
    weights = _load_tensors(src, MODEL_FILE, meta)
    for alias, key in meta.get("aliases", {}).items():
        if key in weights:
            weights[alias] = weights[key]
    plain = unwrap(model)
    want = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or unexpected or wrong:
        lines = [f"checkpoint {src} does not fit this model (checkpoint model_config: {meta.get('model_config')}):"]
        lines += [f"  shape mismatch {k}: checkpoint {have[k]} vs model {want[k]}" for k in wrong]
        lines += [f"  missing in checkpoint: {k}" for k in missing]
        lines += [f"  not in model: {k}" for k in unexpected]
        raise ValueError("\n".join(lines))
    plain.load_state_dict(weights, strict=True)


def load_checkpoint(
    src: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    restore_rng: bool = True,
) -> int:
    """Restore weights (and optimizer state, RNG states) from ``src``; returns the iteration."""
    src = Path(src)
    meta = read_checkpoint_meta(src)
    load_weights(src, model, meta)
    if optimizer is not None:
        if meta.get("optimizer") is None:
            raise ValueError(f"checkpoint {src} holds no optimizer state")
        tensors = _load_tensors(src, OPTIM_FILE, meta)
        state: dict[int, dict[str, Any]] = {}
        for key, t in tensors.items():
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = t
        for idx, scalars in meta["optimizer"]["scalars"].items():
            state.setdefault(int(idx), {}).update(scalars)
        groups = meta["optimizer"]["param_groups"]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if restore_rng and meta.get("rng"):
        set_rng_state(meta["rng"])
    return int(meta["iteration"])


def numpy_rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def set_numpy_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state
