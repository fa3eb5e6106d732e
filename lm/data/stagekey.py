"""The per-root secret that signs shard markers and stage manifests (HMAC-SHA256).

A marker or manifest carries a plain sha256 of its body (it finds accidental damage and
tells it apart) and an HMAC of the same body under its root's key. A file written into the
root by anyone without the key fails the HMAC and is treated as corrupt: recomputed, never
trusted. The HMAC also covers where the file sits (``<stage>/<fingerprint>/<file name>``), so
a genuine marker copied into another stage directory or under another shard's name fails too.

Where the key lives (the root of a stage directory ``D`` is ``D.parent.parent``, as in
``<root>/<stage>/<fingerprint>``):

- ``$LMPIPE_STAGE_KEY``, when set: the key of every root; no key file is read or written.
  Use it for object-store roots and for teams whose workers run as different users.
- a local root: ``<root>/.lmpipe-key`` (32 random bytes, hex), created with mode 0600 by the
  first writer. It must be a regular file owned by this user that nobody else can read or
  write: anything else is refused (a key someone else can replace is one they can forge with).
- an object-store root: the ``<root>/.lmpipe-key`` object, created by the first writer. Anyone
  who can read that object can forge markers: deny reading it in the bucket policy to
  everyone but the pipeline's role, or set ``$LMPIPE_STAGE_KEY`` on every worker instead.

Deleting the key (or changing ``$LMPIPE_STAGE_KEY``) makes every stage under the root
untrusted: the next run recomputes them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import uuid
from pathlib import Path

from lm.data.nospace import reraise_disk_full
from lm.data.storage import RemotePath

KEY_NAME = ".lmpipe-key"
KEY_ENV = "LMPIPE_STAGE_KEY"
_MIN_ENV_KEY = 16
_local_cache: dict[str, tuple[tuple[int, int, int], bytes]] = {}
_remote_cache: dict[str, bytes] = {}


def root_of(stage_dir: Path | RemotePath) -> Path | RemotePath:
    """The artifact root a stage directory ``<root>/<stage>/<fingerprint>`` belongs to."""
    return stage_dir.parent.parent


def key_path(stage_dir: Path | RemotePath) -> Path | RemotePath:
    return root_of(stage_dir) / KEY_NAME


def _env_key() -> bytes | None:
    raw = os.environ.get(KEY_ENV)
    if raw is None:
        return None
    raw = raw.strip()
    if len(raw) < _MIN_ENV_KEY:
        raise ValueError(
            f"${KEY_ENV} is {len(raw)} characters long; give at least {_MIN_ENV_KEY} random characters "
            "(e.g. the output of `openssl rand -hex 32`), or unset it to use <root>/.lmpipe-key"
        )
    return raw.encode()


def _check_local_key_file(path: Path, st: os.stat_result) -> None:
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "not a regular file (a link?)"
    elif hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        problem = f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif st.st_mode & 0o077:
        problem = f"readable or writable by others (mode {stat.filemode(st.st_mode)})"
    if problem:
        raise PermissionError(
            f"stage key {path} is {problem}: whoever can read or replace it can forge shard markers and manifests. "
            f"If it is yours, `chmod 600 {path}`; otherwise delete it (every stage under the root is then recomputed)"
        )


def _read_local(path: Path) -> bytes | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    _check_local_key_file(path, st)
    ident = (st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _local_cache.get(str(path))
    if cached and cached[0] == ident:
        return cached[1]
    with open(path, "rb") as f:
        key = bytes.fromhex(f.read().decode("ascii").strip())
    if len(key) < _MIN_ENV_KEY:
        raise PermissionError(
            f"stage key {path} is too short; delete it (every stage under the root is then recomputed)"
        )
    _local_cache[str(path)] = (ident, key)
    return key


def _create_local(path: Path) -> None:
    """Write a new random key unless one appears first (link(2) does not replace: two writers
    starting at once agree on the first key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{KEY_NAME}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with reraise_disk_full(path):  # a full disk here is a DiskFullError like any other stage write
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32).hex().encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)


def _remote_key(path: RemotePath, create: bool) -> bytes | None:
    key = _remote_cache.get(path.url)
    if key is None:
        if not path.exists():
            if not create:
                return None
            path.write_bytes(secrets.token_bytes(32).hex().encode() + b"\n")  # a race: the last writer's key wins,
        key = bytes.fromhex(path.read_bytes().decode("ascii").strip())  # and both read that one back
        _remote_cache[path.url] = key
    return key


def root_key(stage_dir: Path | RemotePath, *, create: bool) -> bytes | None:
    """The key that signs files of ``stage_dir``; None when there is none and ``create`` is false."""
    if (key := _env_key()) is not None:
        return key
    path = key_path(stage_dir)
    if isinstance(path, RemotePath):
        return _remote_key(path, create)
    key = _read_local(path)
    if key is None and create:
        _create_local(path)
        key = _read_local(path)
    return key


def _message(kind: str, stage_dir: Path | RemotePath, name: str, body: str) -> bytes:
    where = f"{stage_dir.parent.name}/{stage_dir.name}/{name}"
    return f"lmpipe {kind} v1\n{where}\n{body}".encode()


def sign(kind: str, stage_dir: Path | RemotePath, name: str, body: str) -> str:
    """HMAC-SHA256 (hex) of ``body`` (canonical JSON) for file ``name`` of ``stage_dir`` (creates the key if needed)."""
    key = root_key(stage_dir, create=True)
    return hmac.new(key, _message(kind, stage_dir, name, body), hashlib.sha256).hexdigest()


def verify(kind: str, stage_dir: Path | RemotePath, name: str, body: str, mac: object) -> str | None:
    """Why ``mac`` is not the valid HMAC of ``body`` (None when it is)."""
    if not isinstance(mac, str):
        return "it carries no signature (written without this root's key)"
    key = root_key(stage_dir, create=False)
    if key is None:
        return (
            f"the root has no key ({key_path(stage_dir)} is missing "
            f"and ${KEY_ENV} is unset), so nothing there can be trusted"
        )
    want = hmac.new(key, _message(kind, stage_dir, name, body), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, mac):
        return "its signature does not match this root's key (written elsewhere, moved, or forged)"
    return None
