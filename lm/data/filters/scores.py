"""Cached model scores: a threshold change must not run the model again.

A :class:`ScoringFilter`'s scores depend on the document text, the model files (by content
hash) and the filter's code version, never on its thresholds. :class:`ScoreCache` keeps them
per input shard under ``<root>/_cache/scores/<filter>/<key>/<input shard sha256>.parquet``
(``text_hash``, one float column per score), where ``key`` hashes the filter name, version and
model hashes. A rerun reads the file, scores only texts it has not seen, and writes the
union back (atomically) when something was added.

The cache is an accelerator, not part of the stage contract: outputs are identical with or
without it, an unreadable cache file is ignored (and rewritten), and deleting
``<root>/_cache`` only costs model time.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from lm.data.filters.base import ScoringFilter
from lm.data.manifest import read_shard
from lm.data.stage_io import atomic_write_bytes
from lm.data.storage import as_path

_log = logging.getLogger(__name__)
CACHE_DIR = "_cache"


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ScoreCache:
    """Scores of one scoring filter for the documents of one input shard."""

    def __init__(self, root, filt: ScoringFilter, files: dict[str, str], shard_sha256: str):
        ident = json.dumps({"filter": filt.name, "version": filt.version, "files": files}, sort_keys=True)
        key = hashlib.sha256(ident.encode()).hexdigest()[:16]
        self.path = as_path(root) / CACHE_DIR / "scores" / filt.name / key / f"{shard_sha256[:32]}.parquet"
        self.filter = filt
        self.known: dict[bytes, dict[str, float]] | None = None
        self.added = 0
        self.hits = 0

    def _load(self) -> dict[bytes, dict[str, float]]:
        if self.known is None:
            self.known = {}
            if self.path.exists():
                try:
                    table = read_shard(self.path)
                    cols = [c for c in table.column_names if c != "text_hash"]
                    rows = zip(table.column("text_hash").to_pylist(), *(table.column(c).to_pylist() for c in cols))
                    self.known = {r[0]: dict(zip(cols, r[1:])) for r in rows}
                except Exception as e:  # a damaged cache costs model time, never a wrong score
                    _log.warning("score cache %s unreadable (%s): recomputing", self.path, e)
        return self.known

    def scores(self, text: str) -> dict[str, float]:
        """The filter's scores for ``text``: from the cache, else from the model (then cached)."""
        known, h = self._load(), text_hash(text)
        hit = known.get(h)
        if hit is not None:
            self.hits += 1
            return dict(hit)
        s = self.filter.score(text)
        known[h] = s
        self.added += 1
        return dict(s)

    def save(self) -> None:
        """Write the cache file if this shard scored anything new."""
        if not self.added or not self.known:
            return
        items = sorted(self.known.items())
        cols = sorted({c for _, s in items for c in s})
        table = pa.table(
            {
                "text_hash": pa.array([h for h, _ in items], pa.binary(16)),
                **{c: pa.array([s.get(c) for _, s in items], pa.float64()) for c in cols},
            }
        )
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, buf.getvalue())
        self.added = 0
