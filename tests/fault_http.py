"""A local HTTP server (127.0.0.1, threaded, port 0) that serves bytes and injects faults.

Faults are queued per path and consumed one per request:
``"503"`` / ``"404"`` answer with that status; ``"reset:N"`` sends the full headers, N bytes
of the body, then resets the connection (RST); ``"close:N"`` the same but closes it cleanly
(FIN: the transfer just stops short); ``"stall:S"`` sleeps S
seconds before answering (a timeout). Range requests (``bytes=a-b``) are honoured with 206.

Body faults (the headers and status are right, the body misbehaves):
``"stallbody:N:S"`` sends N bytes then goes silent for S seconds and closes (a read timeout
mid-body); ``"slow:N:S"`` trickles the whole body N bytes at a time, S seconds apart (slow but
complete); ``"longlen:N"`` announces a Content-Length N bytes longer than the body it sends,
then closes (the body is shorter than announced).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.log: list[tuple[str, str | None]] = []  # (path, Range header) per request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                server.log.append((path, rng))
                queue = server.faults.get(path) or []
                fault = queue.pop(0) if queue else None
                if fault in ("503", "404", "500"):
                    self.send_error(int(fault))
                    return
                if fault and fault.startswith("stall:"):
                    time.sleep(float(fault.split(":")[1]))
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                start, end = 0, len(data) - 1
                status = 200
                if rng:
                    m = re.match(r"bytes=(\d+)-(\d*)", rng)
                    start = int(m.group(1))
                    end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
                    if start >= len(data):
                        self.send_error(416)
                        return
                    status = 206
                body = data[start : end + 1]
                self.send_response(status)
                extra = int(fault.split(":")[1]) if fault and fault.startswith("longlen:") else 0
                self.send_header("Content-Length", str(len(body) + extra))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if fault and fault.startswith(("reset:", "close:")):
                    n = int(fault.split(":")[1])
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    if fault.startswith("reset:"):
                        time.sleep(0.3)  # let the client read what was sent before the RST
                        # SO_LINGER 0: close() sends RST, the client sees "connection reset".
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        )
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault and fault.startswith("stallbody:"):
                    n, secs = fault.split(":")[1:]
                    self.wfile.write(body[: int(n)])
                    self.wfile.flush()
                    time.sleep(float(secs))
                    self.close_connection = True
                    return
                if fault and fault.startswith("slow:"):
                    n, secs = int(fault.split(":")[1]), float(fault.split(":")[2])
                    for i in range(0, len(body), n):
                        self.wfile.write(body[i : i + n])
                        self.wfile.flush()
                        time.sleep(secs)
                    return
                self.wfile.write(body)
                if extra:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, data: bytes, faults: list[str] | None = None) -> str:
        self.files[path] = data
        self.faults[path] = list(faults or [])
        return self.url + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
