"""Where artifacts live: a local directory, or any fsspec filesystem URL (``s3://bucket/prefix``,
``memory://``, ``gs://``, …), behind one small path type.

``as_path(x)`` returns a ``pathlib.Path`` for a local path or ``file://`` URL (the fast path:
rename is atomic, nothing changes for local roots) and a :class:`RemotePath` otherwise.
``RemotePath`` offers the few ``pathlib`` operations the stage contract uses (``/``, ``name``,
``parent``, ``exists``, ``read_bytes``, ``open``, ``glob``, ``unlink``, ``stat().st_size``) on top of
an fsspec filesystem, and deliberately has no ``__fspath__``: code that would hand a URL to
``open()`` or ``np.memmap`` fails loudly instead of writing a local file named ``s3:``.

Commit rule on object stores (there is no atomic rename): a file is uploaded under a hidden
temporary key in the same directory, then copied to its final key, then the temporary key is
deleted (:func:`commit_file`, :func:`write_bytes_atomic`). A shard counts as written only once
its ``part-N.done.json`` marker exists (written last, naming the files with sizes and sha256),
and a stage only once ``_manifest.json`` exists; readers verify the sha256 (docs/storage.md).

Credentials come only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_ENDPOINT_URL[_S3], AWS_PROFILE, AWS_REGION for S3, read by botocore);
a root URL with embedded credentials is refused without echoing them.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
import shutil
import stat
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from lm.cache import cache_dir

# Writable fsspec filesystems a root may name. Tested here: local paths, file://, memory://, s3://.
SUPPORTED_SCHEMES = ("file", "memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "hdfs", "webhdfs", "sftp", "smb", "oss")
_LOCAL_SCHEMES = ("", "file")


class ShardCorruptError(RuntimeError):
    """A shard, marker or manifest does not match the checksum or structure recorded for it
    (or is not signed with its root's key): it is recomputed, never trusted."""


def _scheme(p: str) -> str:
    if "://" not in p:
        return ""
    return p.split("://", 1)[0].lower()


def redact(url: str) -> str:
    """``url`` with any user:password part replaced by ``***`` (safe to put in an error or a log)."""
    scheme = _scheme(url)
    if not scheme:
        return url
    rest = url.split("://", 1)[1]
    netloc, sep, tail = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    tail = tail.split("?", 1)[0] + ("?***" if "?" in tail else "")
    return f"{scheme}://{netloc}{sep}{tail}"


def check_root(root: str | os.PathLike, what: str = "root") -> str:
    """Validate an artifact root (a local path or a URL of a supported scheme); returns it as a string.

    Refuses an unknown scheme (``s4://``), and a URL carrying credentials or a query string:
    credentials come from the environment only, never from configs (they would end up in
    manifests, Prefect parameters and logs)."""
    s = os.fspath(root)
    if not isinstance(s, str) or not s.strip():
        raise ValueError(f"{what} is blank; give a local directory or a URL such as s3://bucket/prefix")
    if what == "root":
        _check_allowed_root(s)
    scheme = _scheme(s)
    if scheme in _LOCAL_SCHEMES:
        return s
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(
            f"{what} {redact(s)!r}: unsupported scheme {scheme!r}; use a local path or one of "
            + ", ".join(f"{x}://" for x in SUPPORTED_SCHEMES)
        )
    rest = s.split("://", 1)[1]
    netloc = rest.split("/", 1)[0]
    if "@" in netloc:
        raise ValueError(
            f"{what} {redact(s)!r} embeds credentials in the URL; remove them and set them in the "
            "environment instead (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or AWS_PROFILE)"
        )
    if "?" in rest or "#" in rest:
        raise ValueError(f"{what} {redact(s)!r}: a root URL takes no query string or fragment; "
                         "filesystem options (endpoint, region, credentials) come from the environment")
    if scheme != "memory" and not netloc:
        raise ValueError(f"{what} {s!r} names no bucket/host; write it as {scheme}://<bucket>/<prefix>")
    _check_installed(scheme, what, s)
    return s if not rest.strip("/") else s.rstrip("/")


def _check_allowed_root(s: str) -> None:
    """Under ``lmpipe server`` (``LMPIPE_ALLOWED_ROOTS`` set for its workers), a run may write
    only under the allowed roots: a run's parameters come from whoever can reach the API."""
    # `:`-separated like PATH; a `:` that starts `://` belongs to a URL root (s3://bucket/prefix).
    allowed = [a for a in re.split(r":(?!//)", os.environ.get("LMPIPE_ALLOWED_ROOTS", "")) if a]
    if not allowed:
        return
    if _scheme(s) not in _LOCAL_SCHEMES:
        ok = any(s.rstrip("/") == a.rstrip("/") or s.startswith(a.rstrip("/") + "/") for a in allowed if "://" in a)
    else:
        # realpath: a symlink or `..` cannot lead out of an allowed root.
        real = os.path.realpath(os.path.expanduser(s.removeprefix("file://")))
        ok = any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in (os.path.realpath(a) for a in allowed if "://" not in a))
    if not ok:
        raise ValueError(f"root {redact(s)!r} is outside the roots this server allows ({', '.join(allowed)}); "
                         "choose a root under one of them, or restart `lmpipe server` with --allow-root DIR")


@functools.lru_cache(maxsize=None)
def _missing_package(scheme: str) -> str | None:
    """fsspec's install hint when the filesystem's package for ``scheme`` is not importable."""
    import importlib.util

    from fsspec.registry import known_implementations

    impl = known_implementations[scheme]
    package = impl["class"].split(".")[0]
    if package == "fsspec" or importlib.util.find_spec(package) is not None:
        return None
    return (impl.get("err") or f"install {package}") + (" (pip install 'lmpipe[s3]')" if package == "s3fs" else "")


def _check_installed(scheme: str, what: str, url: str) -> None:
    """Fail at validation, not at the first write, when the filesystem's package is missing."""
    if hint := _missing_package(scheme):
        raise ValueError(f"{what} {redact(url)!r}: {hint}")


def is_remote(p: Any) -> bool:
    if isinstance(p, RemotePath):
        return True
    return isinstance(p, str) and _scheme(p) not in _LOCAL_SCHEMES


def resolve_root(root: str | os.PathLike) -> str:
    """A root as stages see it: local → absolute path; remote → the validated URL."""
    s = check_root(root)
    return str(as_path(s).resolve()) if not is_remote(s) else s


def as_path(p: str | os.PathLike | RemotePath) -> Path | RemotePath:
    """``Path`` for local paths and ``file://`` URLs, ``RemotePath`` for other URLs."""
    if isinstance(p, (Path, RemotePath)):
        return p
    s = os.fspath(p)
    scheme = _scheme(s)
    if scheme == "":
        return Path(s)
    if scheme == "file":
        return Path(s[len("file://"):])
    return RemotePath(check_root(s, "path"))


_FILESYSTEMS: dict[tuple, Any] = {}
# The environment an S3 filesystem is built from (botocore reads these itself): a change
# (another endpoint or profile) gets a new filesystem object, not a stale cached one.
_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
             "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION")


def filesystem(protocol: str):
    """One fsspec filesystem per protocol, environment and process. Options come from the
    environment only; S3 listings are not cached (another worker may have written since)."""
    key = (protocol, os.getpid(), tuple(os.environ.get(k) for k in _ENV_KEYS))
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        import fsspec

        kwargs = {"use_listings_cache": False} if protocol in ("s3", "s3a") else {}
        fs = _FILESYSTEMS[key] = fsspec.filesystem(protocol, skip_instance_cache=True, **kwargs)
    return fs


class RemotePath:
    """A file or directory on an fsspec filesystem, with the pathlib subset the stages use."""

    __slots__ = ("url", "protocol", "key")

    def __init__(self, url: str):
        self.protocol, rest = url.split("://", 1)
        self.key = rest.rstrip("/")  # fsspec path: "bucket/prefix/…" (memory: "/…" or "…")
        self.url = f"{self.protocol}://{self.key}"

    # -- naming
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    def __truediv__(self, part: str | os.PathLike) -> RemotePath:
        part = os.fspath(part).strip("/")
        return RemotePath(f"{self.url}/{part}")

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        n = self.name
        return n[n.rfind("."):] if "." in n.lstrip(".") else ""

    @property
    def parent(self) -> RemotePath:
        head = self.key.rsplit("/", 1)[0] if "/" in self.key else ""
        return RemotePath(f"{self.protocol}://{head}")

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def resolve(self) -> RemotePath:
        return self

    @property
    def fs(self):
        return filesystem(self.protocol)

    # -- queries
    def exists(self) -> bool:
        return self.fs.exists(self.key)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.key)

    def is_file(self) -> bool:
        return self.fs.isfile(self.key)

    def stat(self):
        info = self.fs.info(self.key)
        return SimpleNamespace(st_size=int(info["size"]), etag=info.get("ETag"), info=info)

    def iterdir(self):
        for p in sorted(self.fs.ls(self.key, detail=False)):
            yield self / p.rstrip("/").rsplit("/", 1)[-1]  # children keep this path's spelling

    def glob(self, pattern: str):
        """Files directly in this directory whose name matches ``pattern`` (no recursion)."""
        literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        try:
            if literal and self.protocol in ("s3", "s3a"):
                # A server-side prefix: looking for ".…tmp" leftovers lists only hidden keys,
                # not the whole stage directory (thousands of shards).
                names = self.fs.find(self.key, maxdepth=1, prefix=literal)
            else:
                names = self.fs.ls(self.key, detail=False)
        except FileNotFoundError:
            return
        for p in sorted(names):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(name, pattern):
                yield self / name

    # -- reading and writing
    def open(self, mode: str = "rb", **kwargs):
        return self.fs.open(self.key, mode, **kwargs)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.key)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.key, data)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        # Object stores have no directories; a memory:// or sftp:// root needs them made.
        if self.protocol not in ("s3", "s3a", "gs", "gcs", "az", "abfs", "oss"):
            self.fs.makedirs(self.key, exist_ok=True)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise


# --------------------------------------------------------------------------- commit


def tmp_name(final_name: str) -> str:
    """A hidden temporary name next to ``final_name``, unique across processes and machines."""
    return f".{final_name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


def commit_file(local_tmp: Path, final: Path | RemotePath) -> None:
    """Publish a finished local file at ``final``: a rename locally; on a remote filesystem an
    upload under a temporary key, a copy to the final key, then removal of both temporaries."""
    if isinstance(final, Path):
        os.replace(local_tmp, final)
        return
    try:
        _publish(final, lambda fs, key: fs.put_file(str(local_tmp), key))
    finally:
        local_tmp.unlink(missing_ok=True)


def write_bytes_atomic(final: RemotePath, data: bytes) -> None:
    """``atomic_write_bytes`` for a remote file: temporary key, then copy to the final key."""
    _publish(final, lambda fs, key: fs.pipe_file(key, data))


def _publish(final: RemotePath, upload) -> None:
    """The object-store commit: ``upload(fs, key)`` writes a hidden temporary key, which is
    copied to the final key (readers never see a partial object), then removed."""
    tmp = final.with_name(tmp_name(final.name))
    fs = final.fs
    try:
        upload(fs, tmp.key)
        fs.copy(tmp.key, final.key)
    finally:
        try:
            fs.rm_file(tmp.key)
        except FileNotFoundError:
            pass


def open_no_follow(path: Path):
    """Open a local stage file for reading, refusing a symbolic link (a link planted in a
    stage directory must not make us read a file outside it) and anything not a regular file."""
    if os.path.islink(path):
        raise ShardCorruptError(f"{path} is a symbolic link; stage files are never links: refusing to read it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except OSError as e:  # ELOOP: it became a link after the check above
        raise ShardCorruptError(f"{path} could not be opened as a plain file ({e}); refusing to read it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ShardCorruptError(f"{path} is not a regular file; refusing to read it")
    return os.fdopen(fd, "rb")


def file_sha256(path: str | os.PathLike | RemotePath, chunk: int = 1 << 20, *, follow_links: bool = True) -> str:
    """sha256 of a file. ``follow_links=False`` (files a stage lists) refuses a symbolic link."""
    h = hashlib.sha256()
    p = as_path(path)
    if isinstance(p, RemotePath):
        f = p.open("rb")
    else:
        f = open(p, "rb") if follow_links else open_no_follow(p)
    with f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def local_scratch(prefix: str = "lmpipe-") -> Path:
    """A private local directory for files that are built locally, then uploaded."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def artifact_cache_dir() -> Path:
    """``$LMPIPE_CACHE/artifacts`` (default ``~/.cache/lmpipe/artifacts``): remote shards fetched
    for memory-mapping or streaming, one file per sha256."""
    d = cache_dir() / "artifacts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def local_copy(path: Path | RemotePath | str, sha256: str | None = None) -> Path:
    """A local file with ``path``'s content: ``path`` itself when local; for a remote file a
    copy in :func:`artifact_cache_dir` named by its sha256 (verified after download; a cached copy whose
    name is the expected digest is reused). Raises ``ShardCorruptError`` on a mismatch."""
    p = as_path(path)
    if isinstance(p, Path):
        return p
    if sha256 is not None:
        cached = artifact_cache_dir() / sha256[:2] / f"{sha256}{p.suffix}"
        if cached.exists():
            return cached
    tmp_dir = Path(tempfile.mkdtemp(prefix=".fetch-", dir=artifact_cache_dir()))  # same filesystem: os.replace works
    try:
        tmp = tmp_dir / "data"
        h = hashlib.sha256()
        with p.open("rb") as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 22):
                h.update(block)
                dst.write(block)
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256:
            raise ShardCorruptError(f"{p} does not match the checksum in its manifest (corrupted or changed "
                                    "after the stage finished); delete the stage directory and rerun the stage")
        cached = artifact_cache_dir() / digest[:2] / f"{digest}{p.suffix}"
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, cached)  # same content under the same name: a concurrent fetch is harmless
        return cached
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


# Flows whose every stage reads and writes through the stage contract (and so accept a URL root).
REMOTE_READY = ("data", "filters", "tokenizer", "tokenize")


def check_local_root(root: str | os.PathLike, stage: str) -> str:
    """``check_root`` for a flow that does not work on remote roots yet: refuse a URL at
    validation time rather than fail half-way through."""
    s = check_root(root)
    if is_remote(s):
        raise ValueError(f"root {redact(s)!r} is not supported by stage {stage} yet; use a local root "
                         f"(URL roots work for: {', '.join(REMOTE_READY)})")
    return s
