"""Finished stage files: atomic writes, signed shard markers, file names confined to the stage.

The file-level half of the stage contract: how a file is written so readers see it whole or
not at all; how a shard marker (and a manifest, ``lm.data.manifest``) carries a sha256 of its
body and an HMAC under its root's key (``lm.data.stagekey``) so that damage is found and a
marker written by someone without the key is not trusted; and how a file name read from a
marker or manifest is checked to be a plain name inside the stage directory (no separators,
no ``..``, not absolute, not a symbolic link) before anything is opened, hashed or deleted.
Works on local paths and fsspec URLs (``lm.data.storage``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm.data import stagekey
from lm.data.nospace import DiskFullError, disk_full_error, no_room_errno
from lm.data.storage import RemotePath, ShardCorruptError, as_path, file_sha256, write_bytes_atomic

__all__ = [
    "MANIFEST_NAME",
    "ShardCorruptError",
    "atomic_write_bytes",
    "atomic_write_json",
    "canonical_json",
    "check_file",
    "file_sha256",
    "marker_files",
    "now",
    "plain_name",
    "read_marker",
    "read_signed_json",
    "stage_file",
    "write_marker",
    "write_signed_json",
]

MANIFEST_NAME = "_manifest.json"
_MAX_NAME = 255


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def canonical_json(obj: Any) -> str:
    """The JSON text that checksums and signatures are computed over (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        write_bytes_atomic(path, data)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if no_room_errno(e) is not None and not isinstance(e, DiskFullError):
            raise disk_full_error(path, e) from e
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


# --------------------------------------------------------------------------- names inside the stage


def plain_name(name: object, where: str, *, allow_subdirs: bool = False) -> str:
    """``name`` if it is a plain file name (``allow_subdirs``: '/'-separated plain names), else
    ShardCorruptError: a marker or manifest may only name files inside its stage directory."""
    parts = name.split("/") if isinstance(name, str) and allow_subdirs else [name]
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= 4 * _MAX_NAME
        and all(
            isinstance(p, str)
            and 0 < len(p) <= _MAX_NAME
            and p not in (".", "..")
            and "/" not in p
            and "\\" not in p
            and "\x00" not in p
            and not os.path.isabs(p)
            for p in parts
        )
    )
    if not ok:
        raise ShardCorruptError(
            f"{where} names the file {str(name)[:80]!r}, which is not a plain name inside the stage directory "
            "(separators, '..' and absolute paths are refused); the file is not trusted: delete it and rerun the stage"
        )
    return name


def stage_file(
    stage_dir: Path | RemotePath, name: object, where: str, *, allow_subdirs: bool = False
) -> Path | RemotePath:
    """The path of file ``name`` listed by ``where`` (a marker or manifest) of ``stage_dir``,
    refused when the name could leave the directory or (local) a component is a symbolic link."""
    rel = plain_name(name, where, allow_subdirs=allow_subdirs)
    path = stage_dir
    for part in rel.split("/"):
        path = path / part
        if isinstance(path, Path) and path.is_symlink():
            raise ShardCorruptError(
                f"{where} names {rel!r}, and {path} is a symbolic link; stage files are never links: "
                "refusing to follow it (delete the link and rerun the stage)"
            )
    return path


def check_file(path: Path | RemotePath, size: int | None, sha256: str | None) -> str | None:
    """Why ``path`` does not match the recorded size / sha256 (None when it does)."""
    if not path.exists():
        return f"{path} is missing"
    if size is not None and path.stat().st_size != size:
        return f"{path} has {path.stat().st_size} bytes, {size} recorded (truncated or changed)"
    if sha256 is not None:
        try:
            if file_sha256(path, follow_links=False) != sha256:
                return f"{path} does not match its recorded sha256 (corrupted or changed)"
        except ShardCorruptError as e:
            return str(e)
    return None


# --------------------------------------------------------------------------- signed JSON files


def write_signed_json(path: Path | RemotePath, body: Mapping[str, Any], kind: str) -> dict:
    """Write ``body`` with ``<kind>_sha256`` (damage) and ``<kind>_hmac`` (the root's key) atomically."""
    path = as_path(path)
    body = {k: v for k, v in body.items() if k not in (f"{kind}_sha256", f"{kind}_hmac", "_path")}
    text = canonical_json(body)
    signed = {
        **body,
        f"{kind}_sha256": hashlib.sha256(text.encode()).hexdigest(),
        f"{kind}_hmac": stagekey.sign(kind, path.parent, path.name, text),
    }
    atomic_write_json(path, signed)
    return signed


def read_signed_json(path: Path | RemotePath, kind: str, what: str, advice: str) -> dict:
    """Read a file written by :func:`write_signed_json`; ShardCorruptError (naming ``what`` and
    giving ``advice``) when it is not JSON, damaged, or not signed with its root's key."""
    path = as_path(path)
    try:
        raw = path.read_bytes() if isinstance(path, RemotePath) else _read_local_json(path)
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardCorruptError(f"{what} {path} is not valid JSON ({e}); {advice}") from e
    if not isinstance(obj, dict):
        raise ShardCorruptError(f"{what} {path} is not a JSON object; {advice}")
    digest, mac = obj.pop(f"{kind}_sha256", None), obj.pop(f"{kind}_hmac", None)
    text = canonical_json(obj)
    if digest is not None and hashlib.sha256(text.encode()).hexdigest() != digest:
        raise ShardCorruptError(f"{what} {path} does not match its checksum; {advice}")
    if why := stagekey.verify(kind, path.parent, path.name, text, mac):
        raise ShardCorruptError(f"{what} {path} is not trusted: {why}; {advice}")
    return obj


def _read_local_json(path: Path) -> bytes:
    if path.is_symlink():
        raise ShardCorruptError(f"{path} is a symbolic link; stage files are never links: refusing to read it")
    return path.read_bytes()


def write_marker(path: str | os.PathLike, marker: Mapping[str, Any]) -> None:
    """Write a shard's completion marker, checksummed and signed (``marker_sha256``, ``marker_hmac``)."""
    write_signed_json(as_path(path), marker, "marker")


def read_marker(path: str | os.PathLike, index: int | None = None) -> dict:
    """Read a shard marker; ShardCorruptError if it is not JSON, damaged, unsigned, or (``index``
    given) not the marker of that shard."""
    marker = read_signed_json(as_path(path), "marker", "shard marker", "rerun the stage: the shard is recomputed")
    if index is not None and marker.get("index") != index:
        raise ShardCorruptError(
            f"shard marker {path} is for shard {marker.get('index')!r}, not {index}; rerun the stage"
        )
    return marker


def marker_files(marker: Mapping[str, Any], where: str) -> list[tuple[str, dict]]:
    """(role, entry) of every file a marker records: ``shard`` and ``rejects`` (Parquet layout),
    or each of ``outputs`` (token layout); every name checked to be a plain name."""
    out = []
    for role in ("shard", "rejects"):
        if isinstance(marker.get(role), dict):
            out.append((role, marker[role]))
    for entry in marker.get("outputs") or []:
        out.append(("outputs", entry))
    for role, entry in out:
        if not isinstance(entry, dict):
            raise ShardCorruptError(f"{where} has a malformed {role} entry; rerun the stage: the shard is recomputed")
        plain_name(entry.get("name"), where)
    return out
