"""Read-only HTTP access to the artifact roots, so links in Prefect artifacts open in a browser.

``lmpipe server`` runs it in a thread beside the Prefect server (same host, ``--files-port``,
default API port + 1). ``GET /files/<absolute path>`` returns a file, or a listing of a
directory whose entries link onward. Browsers block ``file://`` links from a web page, so the
stage summaries link here instead (``tasks.artifacts.path_markdown``).

Access, as for the API: a request carries either the server's basic-auth string, or a ``sig``
that is an HMAC of the exact path under a key derived from that string
(``tasks.artifacts.link_key``). Artifacts, readable only with the auth string, carry signed
links; a link opens one path and says nothing about the secret.

Only paths whose real path (symlinks resolved) lies inside an allowed root are served: ``..``,
encoded separators and symlinks pointing out are refused. Nothing is ever written, and files
are served as plain text or bytes (never as HTML), with a ``default-src 'none'`` policy.
"""

from __future__ import annotations

import base64
import hmac
import html
import os
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tasks.artifacts import files_url, link_key, sign_path

# Shown inline as text; everything else is a download (no HTML, no scripts from the roots).
TEXT_SUFFIXES = {".json", ".jsonl", ".txt", ".md", ".yaml", ".yml", ".log", ".csv", ".tsv", ".merges", ".vocab"}
INLINE_TYPES = {".png": "image/png", ".svg": "text/plain; charset=utf-8"}


class ArtifactFileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, roots: list[Path], auth: str):
        self.roots = [os.path.realpath(Path(r).expanduser()) for r in roots if "://" not in str(r)]  # local roots only
        self.auth = auth
        self.key = link_key(auth)
        super().__init__((host, port), _Handler)
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    def url(self, path: str) -> str:
        return files_url(path, self.base_url, self.key)

    def start(self) -> ArtifactFileServer:
        self.thread = threading.Thread(target=self.serve_forever, name="lmpipe-artifact-files", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.shutdown()
            self.thread.join(10)
            self.thread = None
        self.server_close()

    def allowed(self, path: str) -> str | None:
        """The real path to serve, or None when ``path`` is not (really) inside a root."""
        if not path.startswith("/") or os.path.normpath(path) != path.rstrip("/") or "\x00" in path:
            return None
        real = os.path.realpath(path)
        if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots):
            return real
        return None


class _Handler(BaseHTTPRequestHandler):
    server: ArtifactFileServer
    server_version = "lmpipe-files"

    def log_message(self, format, *args):  # signed links in query strings stay out of the logs
        pass

    def _authorized(self, path: str, query: dict) -> bool:
        sig = (query.get("sig") or [""])[0]
        if sig and hmac.compare_digest(sig, sign_path(self.server.key, path)):
            return True
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(given, self.server.auth)
        return False

    def _send(
        self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8", extra: dict | None = None
    ) -> None:
        self.send_response(code)
        for k, v in {
            "Content-Type": ctype,
            "Content-Length": str(len(body)),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
            "Cache-Control": "no-store",
            **(extra or {}),
        }.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if not url.path.startswith("/files/"):
            return self._send(404, b"not found\n")
        path = urllib.parse.unquote(url.path[len("/files") :])
        if not self._authorized(path, urllib.parse.parse_qs(url.query)):
            return self._send(
                401,
                b"unauthorized: open this link from a Prefect artifact, or send the server's auth string\n",
                extra={"WWW-Authenticate": 'Basic realm="lmpipe artifacts"'},
            )
        real = self.server.allowed(path)
        if real is None or not os.path.exists(real):
            return self._send(404, b"not found (or outside the artifact roots)\n")
        if os.path.isdir(real):
            return self._send(200, self._listing(path, real).encode(), "text/html; charset=utf-8")
        suffix = Path(real).suffix.lower()
        ctype = (
            "text/plain; charset=utf-8"
            if suffix in TEXT_SUFFIXES
            else INLINE_TYPES.get(suffix, "application/octet-stream")
        )
        with open(real, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            for k, v in {
                "Content-Type": ctype,
                "Content-Length": str(size),
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'",
                "Cache-Control": "no-store",
            }.items():
                self.send_header(k, v)
            if ctype == "application/octet-stream":
                self.send_header(
                    "Content-Disposition", f"attachment; filename*=UTF-8''{urllib.parse.quote(Path(real).name)}"
                )
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(f, self.wfile)

    def _listing(self, path: str, real: str) -> str:
        path = path.rstrip("/") or "/"
        rows = []
        parent = os.path.dirname(path)
        if self.server.allowed(parent) is not None:
            rows.append(f'<li><a href="{html.escape(self.server.url(parent))}">..</a></li>')
        for name in sorted(os.listdir(real)):
            child = f"{path}/{name}"
            full = os.path.join(real, name)
            if self.server.allowed(child) is None:  # a symlink out of the roots: not even listed
                continue
            label = name + ("/" if os.path.isdir(full) else f"  ({os.path.getsize(full):,} bytes)")
            rows.append(f'<li><a href="{html.escape(self.server.url(child))}">{html.escape(label)}</a></li>')
        title = html.escape(path)
        return f"<!doctype html><meta charset=utf-8><title>{title}</title><h1>{title}</h1><ul>{''.join(rows)}</ul>\n"
