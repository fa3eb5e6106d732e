"""Where archive bytes come from: local files, http(s) URLs, Common Crawl listings.

``open_location`` returns a binary stream for a path or URL (optionally a byte range).
Remote reads are streamed and survive a flaky network: 5xx answers, connection resets,
timeouts and transfers that stop early are retried with exponential backoff, and a dropped
transfer resumes with a ``Range`` request from the byte reached, so a long download is never
restarted from zero. A 404 is not retried: it raises FileNotFoundError naming the URL.

``expand_sources`` turns user-facing source specs into concrete locations, failing before any
work starts on a path or glob that does not exist:

- ``data/x.warc.gz``, ``data/*.warc.gz``, ``data/`` (every file inside), ``https://…/x.warc.gz``
- ``index:hits.jsonl`` — the records a Common Crawl index query returned: JSON lines (or CDXJ
  lines ``<surt> <timestamp> {json}``) with ``filename``, ``offset``, ``length``; each record is
  fetched with one Range request (relative filenames resolve under the CC base URL);
- ``cc://CC-MAIN-2024-22?kind=wet&files=2`` — the first ``files`` paths of the crawl's
  ``crawl-data/<CRAWL>/<kind>.paths.gz`` listing under the base URL (``&base=`` or the default
  ``https://data.commoncrawl.org/``).
"""

from __future__ import annotations

import glob
import gzip
import http.client
import io
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CC_BASE_URL = "https://data.commoncrawl.org/"
INDEX_PREFIX = "index:"  # "index:<file>": the records listed (filename, offset, length) in that file
_CRAWL_RE = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
_KINDS = ("warc", "wet", "wat")
_TRANSIENT = (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException, urllib.error.URLError)


@dataclass(frozen=True)
class HttpOptions:
    """How hard to try a remote read."""

    retries: int = 5  # attempts after the first one, per connection and per dropped transfer
    backoff_s: float = 0.5  # first wait; doubles each attempt
    max_backoff_s: float = 30.0
    timeout_s: float = 60.0  # socket timeout for connect and each read
    user_agent: str = "lmpipe/0.1 (+https://github.com/lmpipe)"


class RemoteError(OSError):
    """A remote read that failed for good (after retries) or with a non-retryable status."""


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class HttpFile(io.RawIOBase):
    """A read-only stream over an http(s) resource (or its byte range ``[offset, offset+length)``)
    that reconnects with a Range request when the transfer breaks."""

    def __init__(self, url: str, offset: int = 0, length: int | None = None, options: HttpOptions | None = None):
        super().__init__()
        self.url = url
        self.opts = options or HttpOptions()
        self.pos = offset
        self.end = offset + length if length is not None else None  # exclusive
        self.expected_end: int | None = self.end  # learnt from Content-Length / Content-Range
        self.resp: http.client.HTTPResponse | None = None
        self.num_resumes = 0  # reconnections after a dropped transfer (tests and logs read it)
        self._connect()

    def readable(self) -> bool:
        return True

    def _sleep(self, attempt: int) -> None:
        time.sleep(min(self.opts.backoff_s * (2**attempt), self.opts.max_backoff_s))

    def _connect(self) -> None:
        last: Exception | None = None
        for attempt in range(self.opts.retries + 1):
            headers = {"User-Agent": self.opts.user_agent}
            if self.pos or self.end is not None:
                headers["Range"] = f"bytes={self.pos}-{'' if self.end is None else self.end - 1}"
            try:
                resp = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=self.opts.timeout_s)
            except urllib.error.HTTPError as e:
                e.close()
                if e.code in (404, 410):
                    raise FileNotFoundError(f"{self.url}: HTTP {e.code} {e.reason} (no such remote file; check the URL)") from None
                if e.code == 416:  # nothing left in range: we are at the end
                    self.resp = None
                    self.expected_end = self.pos
                    return
                if e.code != 429 and e.code < 500:
                    raise RemoteError(f"{self.url}: HTTP {e.code} {e.reason}") from None
                last = e
            except _TRANSIENT as e:
                last = e
            else:
                self.resp = resp
                self._learn_size(resp)
                return
            if attempt < self.opts.retries:
                self._sleep(attempt)
        raise RemoteError(f"{self.url}: gave up after {self.opts.retries + 1} attempts: {last}")

    def _learn_size(self, resp: http.client.HTTPResponse) -> None:
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/", resp.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == self.pos:
                self.expected_end = int(m.group(2)) + 1
                return
        if self.pos and resp.status == 200:  # the server ignored Range: skip what we have
            skip = self.pos
            while skip:
                got = resp.read(min(skip, 1 << 20))
                if not got:
                    break
                skip -= len(got)
        cl = resp.headers.get("Content-Length")
        if cl is not None and cl.isdigit():
            self.expected_end = self.pos + int(cl)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        if self.end is not None:
            size = min(size, self.end - self.pos)
        if size <= 0 or self.resp is None:
            return b""
        for attempt in range(self.opts.retries + 1):
            try:
                # read1: return what has arrived, so bytes before a reset are kept and the
                # resume starts exactly after them.
                data = self.resp.read1(size)
                if data or self.expected_end is None or self.pos >= self.expected_end:
                    self.pos += len(data)
                    return data
                err: Exception = ConnectionError(f"transfer ended at byte {self.pos} of {self.expected_end}")
            except (*_TRANSIENT, OSError) as e:
                err = e
            # The transfer broke: reconnect from the byte reached.
            self.resp.close()
            if attempt < self.opts.retries:
                self._sleep(attempt)
                self.num_resumes += 1
                self._connect()
                if self.resp is None:
                    return b""
        raise RemoteError(f"{self.url}: transfer broke at byte {self.pos} and did not resume: {err}")

    def readinto(self, b) -> int:  # io.RawIOBase protocol
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.resp is not None:
            self.resp.close()
        super().close()


class _Window:
    """At most ``length`` bytes of a local file from its current position."""

    def __init__(self, f: BinaryIO, length: int):
        self.f, self.left = f, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()


def open_location(location: str, *, offset: int = 0, length: int | None = None, http: HttpOptions | None = None) -> BinaryIO:
    """A binary stream for a local path or http(s) URL, from ``offset`` (for ``length`` bytes)."""
    if is_url(location):
        return HttpFile(location, offset, length, http)  # type: ignore[return-value]
    path = Path(location)
    if not path.is_file():
        raise FileNotFoundError(f"input {location!r} does not exist or is not a file")
    f = open(path, "rb")
    if offset:
        f.seek(offset)
    return _Window(f, length) if length is not None else f  # type: ignore[return-value]


def resolve_location(file: str, base_url: str = CC_BASE_URL) -> str:
    """A path as the CC index/listings give it (``crawl-data/…``) made absolute under ``base_url``."""
    if is_url(file) or Path(file).is_absolute() or Path(file).exists():
        return file
    if is_url(base_url):
        return urllib.parse.urljoin(base_url if base_url.endswith("/") else base_url + "/", file)
    return str(Path(base_url) / file)


@dataclass(frozen=True)
class CCListing:
    """The first ``num_files`` files of a Common Crawl crawl, from its ``<kind>.paths.gz``."""

    crawl: str
    kind: str = "warc"
    num_files: int = 1
    base_url: str = CC_BASE_URL

    def __post_init__(self):
        if not _CRAWL_RE.match(self.crawl):
            raise ValueError(f"crawl id {self.crawl!r}: expected the form CC-MAIN-YYYY-WW, e.g. CC-MAIN-2024-22")
        if self.kind not in _KINDS:
            raise ValueError(f"listing kind {self.kind!r}: use one of {_KINDS}")
        if self.num_files < 1:
            raise ValueError(f"num_files={self.num_files}: read at least 1 file of the listing")

    @classmethod
    def parse(cls, spec: str) -> "CCListing":
        """``cc://CC-MAIN-2024-22?kind=wet&files=2&base=http://127.0.0.1:8000/``"""
        u = urllib.parse.urlsplit(spec)
        q = dict(urllib.parse.parse_qsl(u.query))
        unknown = set(q) - {"kind", "files", "base"}
        if unknown:
            raise ValueError(f"{spec!r}: unknown parameter(s) {sorted(unknown)}; use kind, files, base")
        return cls(u.netloc, q.get("kind", "warc"), int(q.get("files", 1)), q.get("base", CC_BASE_URL))

    @property
    def listing_url(self) -> str:
        return resolve_location(f"crawl-data/{self.crawl}/{self.kind}.paths.gz", self.base_url)

    def locations(self, http: HttpOptions | None = None) -> list[str]:
        paths = read_paths_listing(self.listing_url, http)
        return [resolve_location(p, self.base_url) for p in paths[: self.num_files]]


def read_paths_listing(location: str, http: HttpOptions | None = None) -> list[str]:
    """The lines of a Common Crawl ``*.paths.gz`` listing (gzip, one path a line)."""
    with open_location(location, http=http) as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return [ln.strip() for ln in data.decode("utf-8").splitlines() if ln.strip()]


def read_index(location: str, http: HttpOptions | None = None) -> list[dict]:
    """Pointer rows of an index file (JSON lines or CDXJ, optionally gzip), in file order."""
    with open_location(location, http=http) as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    rows = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line[line.index("{"):])
            rows.append({"filename": row["filename"], "offset": int(row["offset"]), "length": int(row["length"])})
        except (ValueError, KeyError) as e:
            raise ValueError(f"{location} line {n}: expected a JSON object with filename, offset, length ({e})") from None
    return rows


def refuse_credentials(location: str) -> None:
    """A source URL with ``user:password@`` would land in manifests, shard rows and logs: refuse it
    (without echoing the secret). The reader sends no credentials; Common Crawl's HTTPS
    endpoint needs none."""
    if not is_url(location) and "://" not in location:
        return
    parts = urllib.parse.urlsplit(location)
    if parts.username is not None or parts.password is not None:
        shown = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
        raise ValueError(
            f"source URL {shown} carries credentials (user:password@); they would be written to manifests and "
            "logs. Remove them: lmpipe's HTTP reader sends no credentials (Common Crawl's HTTPS endpoint needs none)"
        )


def expand_sources(specs, http: HttpOptions | None = None) -> list[str]:
    """Concrete locations (paths or URLs) for source specs; FileNotFoundError for a local
    path or glob that matches nothing (raised before anything is read)."""
    out: list[str] = []
    for spec in specs:
        if isinstance(spec, CCListing):
            out += spec.locations(http)
            continue
        spec = str(spec)
        refuse_credentials(spec.removeprefix(INDEX_PREFIX))
        if spec.startswith("~"):
            spec = str(Path(spec).expanduser())
        if spec.startswith("cc://"):
            out += CCListing.parse(spec).locations(http)
        elif spec.startswith(INDEX_PREFIX):  # records named by an index file: one source
            target = str(Path(spec[len(INDEX_PREFIX):]).expanduser()) if not is_url(spec[len(INDEX_PREFIX):]) else spec[len(INDEX_PREFIX):]
            if not is_url(target) and not Path(target).is_file():
                raise FileNotFoundError(f"index file {target!r} (source {spec!r}) does not exist")
            out.append(INDEX_PREFIX + target)
        elif is_url(spec):
            out.append(spec)
        elif any(c in spec for c in "*?["):
            hits = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not hits:
                raise FileNotFoundError(f"source glob {spec!r} matches no file")
            out += hits
        elif Path(spec).is_dir():
            hits = sorted(str(p) for p in Path(spec).rglob("*") if p.is_file() and not p.name.startswith("."))
            if not hits:
                raise FileNotFoundError(f"source directory {spec!r} holds no file")
            out += hits
        elif Path(spec).is_file():
            out.append(spec)
        else:
            raise FileNotFoundError(f"source {spec!r} does not exist (expected a file, directory, glob, http(s) URL or cc:// listing)")
    return out
