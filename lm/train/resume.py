"""Finding the checkpoint to resume from, and refusing a resume whose settings changed the computation.

    checkpoints/step-0000100/   finished checkpoints (meta.json written last); oldest first
    checkpoints/step-0000200.corrupt   a damaged newest one, set aside on resume

A resume must continue the run the checkpoint belongs to. ``check_resume_settings`` compares
the checkpoint's ``train_config`` with the new config on every setting that changes what is
computed (``lm.train.config.changed_settings``: the model's shape and RoPE, the optimizer, the
schedule, batch, seed, dtype; not paths, intervals, kernels or how long to train) and refuses
with the list of changes, unless ``allow_changed``: then the new values apply from this step on,
and every later checkpoint's meta.json records what changed where (``extra.changed_on_resume``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from pathlib import Path

from lm.train.checkpoint import CheckpointCorruptError, verify_checkpoint
from lm.train.config import TrainConfig, changed_settings

_STEP_DIR = re.compile(r"^step-(\d+)$")


class ChangedSettingsError(ValueError):
    """A resume with settings that differ from the checkpoint's (and no allow_changed)."""


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Finished checkpoints (those with meta.json), oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "meta.json").exists()
    ]
    return [p for _, p in sorted(found)]


def usable_checkpoints(out_dir: str | Path, log=print) -> list[Path]:
    """Finished checkpoints, oldest first, after setting aside corrupt ones from the newest end.

    A damaged newest checkpoint (flipped bytes, truncation) is renamed ``step-N.corrupt`` and
    the run resumes from the one before it (or from scratch): resuming is exact, so the
    recomputed steps give the same weights the damaged checkpoint held."""
    found = list_checkpoints(out_dir)
    while found:
        try:
            verify_checkpoint(found[-1])
            break
        except (CheckpointCorruptError, FileNotFoundError) as e:
            bad = found.pop()
            aside = bad.with_name(f"{bad.name}.corrupt")
            shutil.rmtree(aside, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):  # another rank moved it already
                os.replace(bad, aside)
            log(
                f"checkpoint {bad} is damaged ({e}); set aside as {aside.name}, resuming from "
                f"{found[-1].name if found else 'scratch'}"
            )
    return found


def check_resume_settings(meta: dict, cfg: TrainConfig, checkpoint: Path) -> list[dict]:
    """The record of changes to carry in later checkpoints (``extra.changed_on_resume``).

    Raises ChangedSettingsError listing every changed setting unless ``cfg.allow_changed``."""
    history = list((meta.get("extra") or {}).get("changed_on_resume", []))
    saved = meta.get("train_config") or {}
    changed = changed_settings(saved, cfg)
    if changed and not cfg.allow_changed:
        lines = "\n".join(f"  {k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in changed.items())
        raise ChangedSettingsError(
            f"refusing to resume {checkpoint} with changed settings (they change what is computed):\n{lines}\n"
            f"restore them, start a new out_dir, or resume anyway with --allow-changed (allow_changed: true), "
            f"which applies the new values from step {meta.get('iteration')} on and records the change in meta.json"
        )
    if changed:
        history.append({"step": int(meta.get("iteration", 0)), "changed": {k: list(v) for k, v in changed.items()}})
    old_total = saved.get("max_steps")
    if (
        saved
        and cfg.cosine_steps is None
        and saved.get("cosine_steps") is None
        and old_total not in (None, cfg.total_steps())
    ):
        warnings.warn(
            f"resuming with max_steps {old_total} → {cfg.total_steps()}: cosine_steps is not set, so the "
            f"learning-rate schedule now ends at step {cfg.total_steps()} (set cosine_steps to keep it)",
            stacklevel=2,
        )
    return history
