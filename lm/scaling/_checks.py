"""Input checks shared by the two scaling-law fits (IsoFLOP and parametric)."""

from __future__ import annotations

import numpy as np


def as_positive(name: str, values, *, allow_nan: bool = False) -> np.ndarray:
    """A 1-D float array; ValueError naming the non-positive (or non-finite) entries."""
    a = np.asarray(values, dtype=float).reshape(-1)
    finite = np.isfinite(a)
    bad = (~finite & ~(allow_nan & np.isnan(a))) | (finite & (a <= 0))
    if bad.any():
        idx = np.flatnonzero(bad)
        shown = ", ".join(f"[{i}]={float(a[i])!r}" for i in idx[:5]) + (" …" if len(idx) > 5 else "")
        raise ValueError(f"{name} must be positive and finite; {len(idx)} value(s) are not: {shown}")
    return a


def drop_nan_losses(loss: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...], list[str]]:
    """Exclude runs whose loss is NaN (diverged), returning a note that names them."""
    keep = ~np.isnan(loss)
    notes = []
    if not keep.all():
        idx = np.flatnonzero(~keep).tolist()
        notes.append(f"excluded {len(idx)} run(s) with NaN loss (diverged): indices {idx}")
    return loss[keep], tuple(o[keep] for o in others), notes


def same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    return next(iter(lengths.values()))
