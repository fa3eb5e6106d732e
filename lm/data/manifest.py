"""The typed stage manifest, and reading a finished stage back with every file verified.

``Manifest.read(path)`` reads ``_manifest.json`` (or the stage directory holding it), checks
its sha256 and its HMAC under the root's key (``lm.data.stagekey``), and checks that every file
it lists is a plain name inside the stage directory; then::

    m = Manifest.read("outputs/extract/3f2a…")
    m.stage, m.fingerprint, m.counts.kept, m.inputs[0].fingerprint      # typed fields
    m.num_shards, m.shard_path(0)
    table = m.read_shard(0, columns=["text"])      # sha256-verified Parquet table
    local = m.local_shard(0)                       # verified local file (remote: the sha256 cache)
    for row in m.iter_rows(): ...                  # every shard, in order

The on-disk JSON keeps its keys (``stage``, ``fingerprint``, ``version``, ``config``,
``inputs``, ``sources``, ``schema``, ``shards``, ``rejects``, ``counts``, ``failed_ids``,
``timings``, ``manifest_sha256``, ``manifest_hmac`` and stage-specific extras such as
``dtype`` or ``files_sha256``). A ``Manifest`` is also a read-only mapping over that JSON
(``m["counts"]["in"]``), for code written before the typed fields; new code uses the fields.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lm.data.stage_io import MANIFEST_NAME, canonical_json, plain_name, read_signed_json, stage_file
from lm.data.storage import RemotePath, ShardCorruptError, as_path, file_sha256, local_copy, open_no_follow

_CORE = (
    "stage",
    "fingerprint",
    "version",
    "config",
    "inputs",
    "sources",
    "declared",
    "schema",
    "shards",
    "rejects",
    "counts",
    "failed_ids",
    "timings",
)
_ADVICE = "rerun the stage: it recomputes what is damaged"
_VOLATILE = ("timings", "manifest_sha256", "manifest_hmac", "_path")


@dataclass(frozen=True)
class ShardInfo:
    """One file a manifest lists: an output shard or a rejects file."""

    name: str
    num_bytes: int | None = None
    sha256: str | None = None
    index: int | None = None
    num_rows: int | None = None  # Parquet shards
    split: str | None = None  # token shards: "train" / "val"
    num_tokens: int | None = None  # token shards
    source: str | None = None
    num_docs: int | None = None  # token shards

    @classmethod
    def parse(cls, entry: object, where: str) -> ShardInfo:
        if not isinstance(entry, Mapping):
            raise ShardCorruptError(f"{where} lists a shard that is not an object; {_ADVICE}")
        return cls(
            name=plain_name(entry.get("name"), where),
            num_bytes=entry.get("bytes"),
            sha256=entry.get("sha256"),
            index=entry.get("index"),
            num_rows=entry.get("rows"),
            split=entry.get("split"),
            num_tokens=entry.get("tokens"),
            source=entry.get("source"),
            num_docs=entry.get("docs"),
        )


@dataclass(frozen=True)
class InputRef:
    """An upstream stage this one read (lineage)."""

    stage: str
    fingerprint: str
    path: str


@dataclass(frozen=True)
class Counts:
    """Every input record ends kept, rejected (by reason) or failed (by error kind)."""

    num_in: int
    kept: int
    rejected: dict[str, int]
    failed: dict[str, int]
    extra: dict[str, Any]  # stage-specific counters (emails masked, tokens_train, …)

    @property
    def num_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def num_failed(self) -> int:
        return sum(self.failed.values())

    def accounted(self) -> bool:
        """The 'nothing lost' invariant: in = kept + rejected + failed."""
        return self.num_in == self.kept + self.num_rejected + self.num_failed


@dataclass(frozen=True, eq=False)
class Manifest(Mapping):
    """A finished stage's ``_manifest.json``, verified (see the module docstring)."""

    stage: str
    fingerprint: str
    version: str | None
    config: dict
    inputs: tuple[InputRef, ...]
    sources: tuple[str, ...]
    declared: dict  # declared inputs (files by content hash, environment) beyond config and upstream stages
    shards: tuple[ShardInfo, ...]
    rejects: tuple[ShardInfo, ...]
    counts: Counts
    failed_ids: tuple
    schema: dict | None
    timings: dict
    extra: dict  # stage-specific top-level fields (dtype, vocab_size, files_sha256, summary, checkpoint, …)
    path: Path | RemotePath
    raw: dict = field(repr=False)

    # -- reading
    @classmethod
    def read(cls, path: str | os.PathLike | RemotePath) -> Manifest:
        """Read a stage manifest (the file or its stage directory). FileNotFoundError when the
        stage has not finished there; ShardCorruptError when it is damaged or not trusted."""
        path = manifest_file(path)
        if not path.exists():
            raise FileNotFoundError(f"no stage manifest at {path}: the stage has not finished there")
        body = read_signed_json(path, "manifest", "manifest", _ADVICE)
        return cls.from_json(body, path)

    @classmethod
    def from_json(cls, body: dict, path: Path | RemotePath) -> Manifest:
        """Check and type a manifest's JSON (as read from ``path``)."""
        where = f"manifest {path}"
        missing = {"stage", "fingerprint", "shards", "counts"} - set(body)
        if missing:
            raise ShardCorruptError(f"{where} lacks {sorted(missing)}; {_ADVICE}")
        try:
            c = body["counts"]
            counts = Counts(
                int(c["in"]),
                int(c["kept"]),
                dict(c["rejected"]),
                dict(c["failed"]),
                {k: v for k, v in c.items() if k not in ("in", "kept", "rejected", "failed")},
            )
            inputs = tuple(InputRef(i["stage"], i["fingerprint"], i["path"]) for i in body.get("inputs") or [])
        except (KeyError, TypeError, ValueError) as e:
            raise ShardCorruptError(f"{where} has malformed counts or inputs ({e!r}); {_ADVICE}") from None
        for name in body.get("files_sha256") or {}:
            plain_name(name, where, allow_subdirs=True)
        if isinstance(body.get("files"), Mapping):
            for name in body["files"].values():
                plain_name(name, where)
        return cls(
            stage=body["stage"],
            fingerprint=body["fingerprint"],
            version=body.get("version"),
            config=body.get("config") or {},
            inputs=inputs,
            sources=tuple(body.get("sources") or ()),
            declared=body.get("declared") or {},
            shards=tuple(ShardInfo.parse(s, where) for s in body["shards"]),
            rejects=tuple(ShardInfo.parse(s, where) for s in body.get("rejects") or []),
            counts=counts,
            failed_ids=tuple(body.get("failed_ids") or ()),
            schema=body.get("schema"),
            timings=body.get("timings") or {},
            extra={k: v for k, v in body.items() if k not in _CORE},
            path=path,
            raw={**body, "_path": str(path)},
        )

    # -- the mapping over the JSON (transition: new code reads the typed fields)
    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    # -- where things are
    @property
    def dir(self) -> Path | RemotePath:
        return self.path.parent

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def entries(self, kind: str = "shards") -> tuple[ShardInfo, ...]:
        if kind not in ("shards", "rejects"):
            raise ValueError(f"kind={kind!r}: use 'shards' or 'rejects'")
        return self.shards if kind == "shards" else self.rejects

    def shard_path(self, i: int, kind: str = "shards") -> Path | RemotePath:
        """Path of shard ``i`` (a plain name in the stage directory, never a link)."""
        return stage_file(self.dir, self.entries(kind)[i].name, f"manifest {self.path}")

    def file_path(self, name: str) -> Path | RemotePath:
        """Path of a listed extra file (``files_sha256``: may sit in a subdirectory of the stage)."""
        return stage_file(self.dir, name, f"manifest {self.path}", allow_subdirs=True)

    # -- reading shards, verified
    def read_shard(
        self, i: int, columns: list[str] | None = None, kind: str = "shards", verify: bool = True
    ) -> pa.Table:
        """Parquet shard ``i`` as a table, after checking its sha256 against this manifest."""
        return read_shard(self.shard_path(i, kind), self.entries(kind)[i].sha256 if verify else None, columns)

    def local_shard(self, i: int, kind: str = "shards") -> Path:
        """A local, sha256-verified file of shard ``i`` (remote: its copy in the local cache), to
        memory-map or stream."""
        info, path = self.entries(kind)[i], self.shard_path(i, kind)
        if isinstance(path, RemotePath):
            try:
                return local_copy(path, info.sha256)
            except FileNotFoundError:
                raise FileNotFoundError(f"shard {path} listed in {self.path} does not exist") from None
        if not path.exists():
            raise FileNotFoundError(f"shard {path} listed in {self.path} does not exist")
        if info.sha256 and file_sha256(path, follow_links=False) != info.sha256:
            raise ShardCorruptError(
                f"shard {path} does not match the sha256 in {self.path} (corrupted or changed after "
                "the stage finished); rerun the stage that wrote it: it recomputes the damaged shard"
            )
        return path

    def iter_tables(
        self, kind: str = "shards", columns: list[str] | None = None, verify: bool = True
    ) -> Iterator[pa.Table]:
        for i in range(len(self.entries(kind))):
            yield self.read_shard(i, columns, kind, verify)

    def iter_rows(self, kind: str = "shards", columns: list[str] | None = None) -> Iterator[dict]:
        for table in self.iter_tables(kind, columns):
            yield from table.to_pylist()

    def read_table(self, kind: str = "shards", columns: list[str] | None = None) -> pa.Table:
        tables = list(self.iter_tables(kind, columns))
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    # -- summaries
    def accounted(self) -> bool:
        return self.counts.accounted()

    def content_digest(self) -> str:
        """sha256 of what the stage produced, without when it was committed or who signed it:
        equal for identical stages under two roots."""
        body = {k: v for k, v in self.raw.items() if k not in _VOLATILE}
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()

    def to_dict(self) -> dict:
        return {k: v for k, v in self.raw.items() if k != "_path"}


# --------------------------------------------------------------------------- functions (paths or manifests)


def manifest_file(path: str | os.PathLike | RemotePath) -> Path | RemotePath:
    """``path`` itself when it names a manifest, else the manifest inside the stage directory."""
    p = as_path(path)
    if isinstance(p, RemotePath):
        return p if p.name.endswith(".json") else p / MANIFEST_NAME  # no directory objects to ask about
    return p / MANIFEST_NAME if p.is_dir() else p


def read_manifest(path: str | os.PathLike | RemotePath | Mapping) -> Manifest:
    """``Manifest.read`` (also accepts a Manifest, returned as it is)."""
    if isinstance(path, Manifest):
        return path
    if isinstance(path, Mapping):
        return Manifest.read(path["_path"])
    return Manifest.read(path)


def manifest_dir(manifest: Mapping | str | os.PathLike) -> Path | RemotePath:
    if isinstance(manifest, Mapping):
        return as_path(manifest["_path"]).parent
    return manifest_file(manifest).parent


def shard_paths(manifest: Mapping | str | os.PathLike, kind: str = "shards") -> list[Path | RemotePath]:
    """Paths of a finished stage's output shards (``kind="rejects"`` for the rejects)."""
    m = read_manifest(manifest)
    return [m.shard_path(i, kind) for i in range(len(m.entries(kind)))]


def read_shard(
    path: str | os.PathLike, expected_sha256: str | None = None, columns: list[str] | None = None
) -> pa.Table:
    """Read one Parquet shard, verifying its checksum when one is given. A local file is opened
    once (never through a link), hashed, then parsed from the same descriptor; a remote one is
    fetched with one GET, and the checksum is verified on exactly the bytes that are parsed."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"shard {path} does not exist") from None
        _check_digest(path, hashlib.sha256(data).hexdigest(), expected_sha256)
        return _parse(path, pa.BufferReader(data), columns)
    with open_no_follow(path) as f:
        if expected_sha256 is not None:
            h = hashlib.sha256()
            while block := f.read(1 << 20):
                h.update(block)
            _check_digest(path, h.hexdigest(), expected_sha256)
            f.seek(0)
        return _parse(path, f, columns)


def _check_digest(path, got: str, expected: str | None) -> None:
    if expected is not None and got != expected:
        raise ShardCorruptError(
            f"shard {path} does not match the checksum in its manifest (corrupted or changed "
            "after the stage finished); rerun the stage that wrote it: it recomputes the damaged shard"
        )


def _parse(path, source, columns: list[str] | None) -> pa.Table:
    try:
        return pq.read_table(source, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardCorruptError(f"shard {path} is not readable Parquet ({e}); rerun the stage that wrote it") from e


def read_shard_schema(path: str | os.PathLike | RemotePath) -> pa.Schema:
    """The Arrow schema of a Parquet shard, from its footer (a ranged read on a remote root)."""
    path = as_path(path)
    if isinstance(path, RemotePath):
        with path.open("rb") as f:
            return pq.read_schema(f)
    with open_no_follow(path) as f:
        return pq.read_schema(f)


def iter_stage_tables(
    manifest: Mapping | str | os.PathLike, kind: str = "shards", columns: list[str] | None = None, verify: bool = True
) -> Iterator[pa.Table]:
    return read_manifest(manifest).iter_tables(kind, columns, verify)


def iter_rows(
    manifest: Mapping | str | os.PathLike, kind: str = "shards", columns: list[str] | None = None
) -> Iterator[dict]:
    return read_manifest(manifest).iter_rows(kind, columns)


def read_stage_table(
    manifest: Mapping | str | os.PathLike, kind: str = "shards", columns: list[str] | None = None
) -> pa.Table:
    return read_manifest(manifest).read_table(kind, columns)


def accounted(manifest: Mapping) -> bool:
    """Every input record is kept, rejected or failed (the 'nothing lost' invariant)."""
    if isinstance(manifest, Manifest):
        return manifest.accounted()
    c = manifest["counts"]
    return c["in"] == c["kept"] + sum(c["rejected"].values()) + sum(c["failed"].values())


def table_from_rows(rows: Iterable[Mapping], schema: pa.Schema | None = None) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=schema)
