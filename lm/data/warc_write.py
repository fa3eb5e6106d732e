"""Write web pages into a WARC file (WARC/1.1, one gzip member per record, as Common Crawl does).

Used to turn a folder of HTML pages (e.g. the Debian package ``debian-handbook``: 127 pages in
each of 26 languages) into a crawl-like input for the ``data`` flow. Record ids and dates are
derived from the URL and the file, so the same pages always give the same bytes (and so the
same stage fingerprints downstream).
"""

from __future__ import annotations

import datetime as _dt
import gzip
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

_NS = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # the URL namespace of RFC 4122


def _member(headers: list[tuple[str, str]], block: bytes) -> bytes:
    head = "WARC/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + f"Content-Length: {len(block)}\r\n\r\n"
    return gzip.compress(head.encode() + block + b"\r\n\r\n", compresslevel=6, mtime=0)


def write_warc(path: str | os.PathLike, pages: Iterable[tuple[str, bytes, _dt.datetime]]) -> int:
    """Write ``(url, html, date)`` pages as WARC ``response`` records; returns the number written.

    The file appears only when complete (written to a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    with open(tmp, "wb") as f:
        for url, html, date in pages:
            http = (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                + f"Content-Length: {len(html)}\r\n\r\n".encode()
                + html
            )
            stamp = date.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            headers = [
                ("WARC-Type", "response"),
                ("WARC-Record-ID", f"<urn:uuid:{uuid.uuid5(_NS, url)}>"),
                ("WARC-Date", stamp),
                ("WARC-Target-URI", url),
                ("Content-Type", "application/http; msgtype=response"),
            ]
            f.write(_member(headers, http))
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def html_folder_pages(folder: str | os.PathLike, base_url: str) -> Iterable[tuple[str, bytes, _dt.datetime]]:
    """``(url, html, date)`` for every ``*.html`` under ``folder``, in sorted order."""
    folder = Path(folder)
    for p in sorted(folder.rglob("*.html")):
        date = _dt.datetime.fromtimestamp(p.stat().st_mtime, _dt.UTC)
        yield f"{base_url.rstrip('/')}/{p.relative_to(folder).as_posix()}", p.read_bytes(), date
