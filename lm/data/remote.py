"""Where archive bytes come from: local files, http(s) URLs, Common Crawl listings.

``open_location`` returns a binary stream for a path or URL (optionally a byte range).
Remote reads are streamed and survive a flaky network: 5xx answers, connection resets,
timeouts and transfers that stop early are retried with exponential backoff, and a dropped
transfer resumes with a ``Range`` request from the byte reached, so a long download is never
restarted from zero. A 404 is not retried: it raises FileNotFoundError naming the URL. Each
source also has an overall deadline (``HttpOptions.deadline_s``): a server that drips a byte
every few seconds raises :class:`SourceDeadlineError` when it passes, instead of holding the
run forever (the reader counts the rest of that source as failed, ``source_deadline``).

``expand_sources`` turns user-facing source specs into concrete locations, failing before any
work starts on a path or glob that does not exist:

- ``data/x.warc.gz``, ``data/*.warc.gz``, ``data/`` (every file inside), ``https://…/x.warc.gz``
- ``index:hits.jsonl`` — the records a Common Crawl index query returned: JSON lines (or CDXJ
  lines ``<surt> <timestamp> {json}``) with ``filename``, ``offset``, ``length``; each record is
  fetched with one Range request. Filenames are relative paths (resolved under the CC base URL)
  or http(s) URLs without credentials; local absolute paths only with
  ``HttpOptions.allow_local_index_paths`` (an index file must not make the run read any local
  file it names). A bad entry fails the source before anything is read, without echoing a secret;
- ``cc://CC-MAIN-2024-22?kind=wet&files=2`` — the first ``files`` paths of the crawl's
  ``crawl-data/<CRAWL>/<kind>.paths.gz`` listing under the base URL (``&base=`` or the default
  ``https://data.commoncrawl.org/``).
"""

from __future__ import annotations

import glob
import http.client
import io
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lm.data.gzstream import gunzip_capped
from lm.data.storage import redact

CC_BASE_URL = "https://data.commoncrawl.org/"
INDEX_PREFIX = "index:"  # "index:<file>": the records listed (filename, offset, length) in that file
_CRAWL_RE = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
_KINDS = ("warc", "wet", "wat")
_TRANSIENT = (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException, urllib.error.URLError)
MAX_LISTING_BYTES = 256 << 20  # a paths listing or an index file, decompressed


@dataclass(frozen=True)
class HttpOptions:
    """How hard to try a remote read."""

    retries: int = 5  # attempts after the first one, per connection and per dropped transfer
    backoff_s: float = 0.5  # first wait; doubles each attempt
    max_backoff_s: float = 30.0
    timeout_s: float = 60.0  # socket timeout for connect and each read
    deadline_s: float | None = 3600.0  # overall limit per source (a file, or an index's records); None: no limit
    allow_local_index_paths: bool = False  # index: entries may name local absolute paths
    user_agent: str = "lmpipe/0.1 (+https://github.com/lmpipe)"

    def __post_init__(self):
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s={self.deadline_s!r}: give a positive number of seconds, or None for no limit")

    def deadline(self) -> float | None:
        """The absolute (monotonic) deadline of a source that starts now."""
        return None if self.deadline_s is None else time.monotonic() + self.deadline_s


class RemoteError(OSError):
    """A remote read that failed for good (after retries) or with a non-retryable status."""


class SourceDeadlineError(RemoteError):
    """A source took longer than its overall deadline (``HttpOptions.deadline_s``)."""


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class HttpFile(io.RawIOBase):
    """A read-only stream over an http(s) resource (or its byte range ``[offset, offset+length)``)
    that reconnects with a Range request when the transfer breaks."""

    def __init__(
        self,
        url: str,
        offset: int = 0,
        length: int | None = None,
        options: HttpOptions | None = None,
        deadline: float | None = None,
    ):
        """``deadline``: absolute ``time.monotonic()`` value by which the whole read must be done
        (default: ``options.deadline_s`` from now)."""
        super().__init__()
        self.url = url
        self.opts = options or HttpOptions()
        self.deadline = deadline if deadline is not None else self.opts.deadline()
        self.pos = offset
        self.end = offset + length if length is not None else None  # exclusive
        self.expected_end: int | None = self.end  # learnt from Content-Length / Content-Range
        self.resp: http.client.HTTPResponse | None = None
        self.num_resumes = 0  # reconnections after a dropped transfer (tests and logs read it)
        self._connect()

    def readable(self) -> bool:
        return True

    def _sleep(self, attempt: int) -> None:
        wait = min(self.opts.backoff_s * (2**attempt), self.opts.max_backoff_s)
        if self.deadline is not None:
            wait = min(wait, max(0.0, self.deadline - time.monotonic()))
        time.sleep(wait)

    def _timeout(self) -> float:
        """The socket timeout of the next connect: never past the deadline (so a stalled read
        overshoots it by no more than ``timeout_s``)."""
        self._check_deadline()
        if self.deadline is None:
            return self.opts.timeout_s
        return max(0.001, min(self.opts.timeout_s, self.deadline - time.monotonic()))

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            of = f" of {self.expected_end}" if getattr(self, "expected_end", None) is not None else ""
            raise SourceDeadlineError(
                f"{self.url}: the source's overall deadline of "
                f"{self.opts.deadline_s:g} s (http.deadline_s) passed at byte "
                f"{self.pos}{of}; the server is too slow or stalls. Counted "
                "as a failed source; raise http.deadline_s for a slow link"
            )

    def _connect(self) -> None:
        last: Exception | None = None
        for attempt in range(self.opts.retries + 1):
            headers = {"User-Agent": self.opts.user_agent}
            if self.pos or self.end is not None:
                headers["Range"] = f"bytes={self.pos}-{'' if self.end is None else self.end - 1}"
            try:
                resp = urllib.request.urlopen(
                    urllib.request.Request(self.url, headers=headers), timeout=self._timeout()
                )
            except urllib.error.HTTPError as e:
                e.close()
                if e.code in (404, 410):
                    raise FileNotFoundError(
                        f"{self.url}: HTTP {e.code} {e.reason} (no such remote file; check the URL)"
                    ) from None
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
            self._check_deadline()
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


def open_location(
    location: str,
    *,
    offset: int = 0,
    length: int | None = None,
    http: HttpOptions | None = None,
    deadline: float | None = None,
) -> BinaryIO:
    """A binary stream for a local path or http(s) URL, from ``offset`` (for ``length`` bytes).
    ``deadline``: see :class:`HttpFile` (local files have none)."""
    if is_url(location):
        return HttpFile(location, offset, length, http, deadline)  # type: ignore[return-value]
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
    def parse(cls, spec: str) -> CCListing:
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
        """The first ``num_files`` entries, checked like index entries (:func:`resolve_index_entry`)."""
        allow_local = (http or HttpOptions()).allow_local_index_paths
        paths = read_paths_listing(self.listing_url, http)
        return [
            resolve_index_entry(p, self.base_url, allow_local, f"{redact(self.listing_url)} line {n}")
            for n, p in enumerate(paths[: self.num_files], 1)
        ]


def _read_small(location: str, http: HttpOptions | None, what: str) -> str:
    """A listing or index file's text (gzip or plain), bounded by :data:`MAX_LISTING_BYTES`."""
    with open_location(location, http=http) as f:
        data = f.read(MAX_LISTING_BYTES + 1)
    return gunzip_capped(data, MAX_LISTING_BYTES, f"{what} {redact(location)}").decode("utf-8")


def read_paths_listing(location: str, http: HttpOptions | None = None) -> list[str]:
    """The lines of a Common Crawl ``*.paths.gz`` listing (gzip, one path a line)."""
    return [ln.strip() for ln in _read_small(location, http, "paths listing").splitlines() if ln.strip()]


def read_index(location: str, http: HttpOptions | None = None, base_url: str = CC_BASE_URL) -> list[dict]:
    """Pointer rows of an index file (JSON lines or CDXJ, optionally gzip), in file order, each
    ``filename`` checked and resolved (:func:`resolve_index_entry`); ValueError names the line."""
    opts = http or HttpOptions()
    rows = []
    for n, line in enumerate(_read_small(location, http, "index file").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{redact(location)} line {n}"
        try:
            row = json.loads(line[line.index("{") :])
            file, offset, length = row["filename"], int(row["offset"]), int(row["length"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{where}: expected a JSON object with filename, offset, length ({type(e).__name__})"
            ) from None
        if offset < 0 or length < 0:
            raise ValueError(f"{where}: offset and length must be ≥ 0 (got {offset}, {length})")
        rows.append(
            {
                "filename": resolve_index_entry(file, base_url, opts.allow_local_index_paths, where),
                "offset": offset,
                "length": length,
            }
        )
    return rows


def resolve_index_entry(file: object, base_url: str, allow_local: bool, where: str) -> str:
    """Where an index entry's ``filename`` points: an http(s) URL without credentials, a relative
    path under ``base_url`` (no ``..``), or — only when ``allow_local`` — a local absolute path.
    ValueError otherwise; the message never repeats a password."""
    if not isinstance(file, str) or not file.strip():
        raise ValueError(f"{where}: filename must be a non-empty string")
    if "://" in file:
        if not is_url(file):
            raise ValueError(f"{where}: filename {redact(file)!r} is not an http(s) URL or a relative path")
        refuse_credentials(file, f"{where}: index entry")
        return file
    if Path(file).is_absolute() or file.startswith("~"):
        if not allow_local:
            raise ValueError(
                f"{where}: filename names the local path {file!r}; an index file may name local files only "
                "when http.allow_local_index_paths is true (otherwise give paths relative to cc_base_url, or URLs)"
            )
        return str(Path(file).expanduser())
    if ".." in Path(file).parts or "\\" in file:
        raise ValueError(
            f"{where}: filename {file!r} climbs out of the base ({base_url}) with '..'; give it relative to the base"
        )
    if is_url(base_url):
        return urllib.parse.urljoin(base_url if base_url.endswith("/") else base_url + "/", file)
    return os.path.abspath(Path(base_url).expanduser() / file)


def refuse_credentials(location: str, what: str = "source URL") -> None:
    """A source URL with ``user:password@`` would land in manifests, shard rows and logs: refuse it
    (without echoing the secret). The reader sends no credentials; Common Crawl's HTTPS
    endpoint needs none."""
    if not is_url(location) and "://" not in location:
        return
    if "@" in location.split("://", 1)[-1].split("/", 1)[0]:
        raise ValueError(
            f"{what} {redact(location)} carries credentials (user:password@); they would be written to manifests and "
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
            target = (
                str(Path(spec[len(INDEX_PREFIX) :]).expanduser())
                if not is_url(spec[len(INDEX_PREFIX) :])
                else spec[len(INDEX_PREFIX) :]
            )
            if not is_url(target) and not Path(target).is_file():
                raise FileNotFoundError(f"index file {target!r} (source {spec!r}) does not exist")
            read_index(target, http)  # a bad entry (credentials, a local path not allowed) fails now, before any work
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
            raise FileNotFoundError(
                f"source {spec!r} does not exist (expected a file, directory, glob, http(s) URL or cc:// listing)"
            )
    return out
