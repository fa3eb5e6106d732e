"""Stage fingerprints, computed only from what a stage declares it reads.

A stage's directory name is a hash of its declaration: stage name, code version, config,
upstream stages' fingerprints (and raw sources by identity), and — declared with
``Stage(..., files={...}, env=[...])`` — the files it reads by content hash and the
environment variables that change what it computes. Same declaration → same directory →
nothing to do on rerun; a different model file or setting → a new directory. A stage that
declares no files or environment has the fingerprint it always had.

The declared values are written into the stage's manifest (``declared``), so ``lmpipe
inspect`` shows which model file (by sha256) produced a stage.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm.data.stage_io import canonical_json
from lm.data.storage import RemotePath, as_path, file_sha256

_sha_cache: dict[tuple, str] = {}


def fingerprint(
    stage: str,
    version: str,
    config: Mapping[str, Any],
    inputs: Sequence[str],
    declared: Mapping[str, Any] | None = None,
) -> str:
    """Hash of (stage, code version, config, input fingerprints[, declared files and env]); 16 hex chars."""
    payload = {"stage": stage, "version": str(version), "config": config, "inputs": list(inputs)}
    if declared:
        payload["declared"] = declared
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def source_fingerprint(source: str) -> str:
    """Identity of a raw input (file or URL) for fingerprints: local files by size and mtime."""
    if "://" in str(source):
        return str(source)
    p = Path(source)
    if p.exists():
        st = p.stat()
        return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return source


def content_sha256(path: str | os.PathLike | RemotePath) -> str:
    """sha256 of a file's content; a local file is hashed once per (inode, size, mtime) in a process."""
    p = as_path(path)
    if isinstance(p, RemotePath):
        return file_sha256(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"declared input file {p} does not exist") from None
    key = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = file_sha256(p)
    return _sha_cache[key]


@dataclass(frozen=True)
class DeclaredInputs:
    """Files (by content hash) and environment variables a stage reads, besides its config and upstream stages."""

    files: dict[str, dict] = field(default_factory=dict)  # role -> {"path": …, "sha256": …}
    env: dict[str, str | None] = field(default_factory=dict)  # variable -> value (None: unset)

    @classmethod
    def declare(cls, files: Mapping[str, str | os.PathLike] | None = None, env: Sequence[str] = ()) -> DeclaredInputs:
        """Read the declared files' hashes and the variables' values now (FileNotFoundError names a missing file)."""
        if isinstance(env, str):
            raise TypeError(f"env={env!r}: give a list of variable names")
        return cls(
            files={role: {"path": str(p), "sha256": content_sha256(p)} for role, p in sorted((files or {}).items())},
            env={name: os.environ.get(name) for name in sorted(env)},
        )

    def fingerprint_part(self) -> dict:
        """What enters the fingerprint: contents and values, not where a file happens to be."""
        out: dict = {}
        if self.files:
            out["files"] = {role: f["sha256"] for role, f in self.files.items()}
        if self.env:
            out["env"] = dict(self.env)
        return out

    def to_json(self) -> dict:
        """What the manifest records (``declared``); empty when nothing is declared."""
        out: dict = {}
        if self.files:
            out["files"] = self.files
        if self.env:
            out["env"] = self.env
        return out
