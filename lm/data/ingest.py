"""The extract stage's logic: archive records in, text documents out, every record accounted for.

Reads: WARC/WET/ARC files or URLs (one shard = one file, or one byte slice of a big gzip file).
Writes (through the stage contract, ``lm.data.shards``): Parquet rows with :data:`DOC_SCHEMA`
(``id``, ``url``, ``source``, ``text`` and a few provenance columns) for kept documents, and the
same columns plus ``reason`` for rejected records.

Each record ends as exactly one of:

- kept: an HTML response (or WET conversion) with non-empty extracted text;
- rejected, with a reason: ``record_type_<type>`` (warcinfo, request, metadata, revisit…),
  ``http_status`` (not 2xx), ``non_html`` (images, PDFs, JSON…), ``over_size_cap``,
  ``empty_extraction`` (no visible text);
- failed, with a kind: the reader's errors (``truncated_gzip``, ``corrupt_gzip``, ``not_warc``,
  ``truncated_record``, ``bad_header``, ``bad_content_length``), ``undecodable`` (binary bytes
  where text was announced), or ``source_error`` (the file could not be read at all).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pydantic import Field, field_validator

from lm.config import Config
from lm.data import remote
from lm.data.extract import decode_text, html_to_text
from lm.data.warc import Record

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("url", pa.string()),
        ("source", pa.string()),  # "<file>:<offset>": where to find the record again
        ("text", pa.string()),
        ("date", pa.string()),  # WARC-Date (ISO 8601 as written by the crawler)
        ("record_type", pa.string()),
        ("content_type", pa.string()),
        ("num_bytes", pa.int64()),  # payload size before extraction
    ]
)

# Slice bounds: a slice smaller than a typical record holds no record (``slice_bytes=1`` once
# planned 194k tasks for 194 KB), and one file never becomes more than MAX_SLICES_PER_FILE tasks.
MIN_SLICE_BYTES = 16 << 10
MAX_SLICE_BYTES = 64 << 30
MAX_SLICES_PER_FILE = 4096

# Sniffed when a response has no Content-Type (old ARCs, some crawlers).
_HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<body")


class ExtractConfig(Config):
    """Settings of the extract stage (all of them change its output, so all are fingerprinted)."""

    html_types: list[str] = Field(
        default=["text/html", "application/xhtml+xml"],
        max_length=64,
        description="media types sent to the HTML extractor; other responses are rejected as non_html",
    )
    max_payload_bytes: int = Field(
        default=2_000_000,
        gt=0,
        le=1 << 34,
        description="responses larger than this are rejected (over_size_cap) without extraction",
    )
    main_content: bool = Field(
        default=False, description="keep only the main content (resiliparse heuristic: drops menus, headers, footers)"
    )
    slice_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        le=MAX_SLICE_BYTES,
        description="split local gzip files bigger than this into slices of this many bytes, one task each "
        f"(0: one task per file; else {MIN_SLICE_BYTES // 1024} KiB "
        f"to 64 GiB, and at most {MAX_SLICES_PER_FILE} slices per file)",
    )

    @field_validator("slice_bytes")
    @classmethod
    def _slice_bounds(cls, v: int) -> int:
        if 0 < v < MIN_SLICE_BYTES:
            raise ValueError(
                f"slice_bytes={v} would plan one task per {v} bytes; use 0 (one task per file) "
                f"or at least {MIN_SLICE_BYTES} ({MIN_SLICE_BYTES // 1024} KiB; 268435456 = 256 MiB is the default)"
            )
        return v


@dataclass
class Outcome:
    """What became of one record: ``status`` is kept | rejected | failed; ``why`` the reason or kind."""

    status: str
    row: dict
    why: str = ""


def _row(rec: Record, text: str = "") -> dict:
    return {
        "id": rec.id,
        "url": rec.url,
        "source": rec.source,
        "text": text,
        "date": rec.date,
        "record_type": rec.record_type,
        "content_type": rec.content_type,
        "num_bytes": len(rec.payload),
    }


def _is_html(rec: Record, html_types: Iterable[str]) -> bool:
    mime = rec.mime
    if mime in html_types:
        return True
    return not mime and rec.payload[:200].lstrip().lower().startswith(_HTML_SNIFF)


def classify(rec: Record, cfg: ExtractConfig) -> Outcome:
    """Decide what one record becomes (the whole stage policy, in one place)."""
    if rec.error:
        return Outcome("failed", _row(rec), rec.error)
    if rec.record_type == "conversion":  # WET: already text
        if len(rec.payload) > cfg.max_payload_bytes:
            return Outcome("rejected", _row(rec), "over_size_cap")
        text = decode_text(rec.payload)
        if text is None:
            return Outcome("failed", _row(rec), "undecodable")
        return Outcome("kept", _row(rec, text)) if text.strip() else Outcome("rejected", _row(rec), "empty_extraction")
    if rec.record_type not in ("response", "resource"):
        return Outcome("rejected", _row(rec), f"record_type_{rec.record_type}")
    if rec.oversized:  # the reader skipped a block far over the cap without reading it
        return Outcome("rejected", _row(rec), "over_size_cap")
    if rec.http_status is not None and not 200 <= rec.http_status < 300:
        return Outcome("rejected", _row(rec), "http_status")
    if not _is_html(rec, cfg.html_types):
        return Outcome("rejected", _row(rec), "non_html")
    if len(rec.payload) > cfg.max_payload_bytes:
        return Outcome("rejected", _row(rec), "over_size_cap")
    text = html_to_text(rec.payload, main_content=cfg.main_content)
    if text is None:
        return Outcome("failed", _row(rec), "undecodable")
    if not text.strip():
        return Outcome("rejected", _row(rec), "empty_extraction")
    return Outcome("kept", _row(rec, text))


def max_block_bytes(cfg: ExtractConfig) -> int:
    """Blocks bigger than this are surely over the payload cap: the reader skips them unread."""
    return cfg.max_payload_bytes + (1 << 20)  # room for HTTP headers


def extract_documents(records: Iterable[Record], cfg: ExtractConfig) -> Iterator[Outcome]:
    for rec in records:
        yield classify(rec, cfg)


def plan_shards(locations: list[str], slice_bytes: int, base_url: str = remote.CC_BASE_URL) -> list[dict]:
    """One shard per location, or per ``slice_bytes`` of a local gzip file bigger than that.
    ``index:`` locations (records named by an index file) resolve filenames under ``base_url``.

    Slices cut at byte offsets; the reader assigns each record to the slice where its gzip
    member starts, so the slices partition the records without reading the file here.
    """
    shards = []
    for loc in locations:
        if loc.startswith(remote.INDEX_PREFIX):
            shards.append({"location": loc, "start": 0, "end": None, "size": None, "base_url": base_url})
            continue
        size = None if remote.is_url(loc) else Path(loc).stat().st_size
        if slice_bytes and size is not None and size > slice_bytes and _per_record_gzip(loc):
            if -(-size // slice_bytes) > MAX_SLICES_PER_FILE:
                raise ValueError(
                    f"slice_bytes={slice_bytes} cuts {loc} ({size} bytes) into more than {MAX_SLICES_PER_FILE} "
                    f"tasks; use slice_bytes >= {-(-size // MAX_SLICES_PER_FILE)} (or 0: one task per file)"
                )
            for start in range(0, size, slice_bytes):
                shards.append({"location": loc, "start": start, "end": min(start + slice_bytes, size), "size": size})
        else:
            shards.append({"location": loc, "start": 0, "end": None, "size": size})
    return shards


def _per_record_gzip(path: str, probe: int = 8 << 20) -> bool:
    """True if ``path`` is gzip whose first member ends within ``probe`` bytes: many members,
    so a slice can find record starts. A whole-file gzip stream cannot be sliced."""
    d = zlib.decompressobj(31)
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return False
        f.seek(0)
        left = probe
        while left > 0 and (chunk := f.read(min(1 << 20, left))):
            left -= len(chunk)
            try:
                d.decompress(chunk, 1)  # output is not needed: only where the member ends
                while d.unconsumed_tail and not d.eof:
                    d.decompress(d.unconsumed_tail, 1 << 20)
            except zlib.error:
                return False
            if d.eof:  # the first member ended: are there more after it?
                return bool(d.unused_data or f.read(1))
    return False


def shard_label(shard: dict) -> str:
    if shard["start"] == 0 and shard["end"] is None:
        return shard["location"]
    return f"{shard['location']}[{shard['start']}:{shard['end']}]"
