"""A loopback stand-in for the Hugging Face hub, enough for ``huggingface_hub.hf_hub_download``.

It serves ``HEAD``/``GET /{owner}/{repo}/resolve/{revision}/{path}`` from files held in memory, with the
headers the client relies on (``X-Repo-Commit``, ``ETag``, ``Content-Length``) and byte ranges
(``Range: bytes=N-`` → 206). It sends no Xet headers, so the client downloads over plain HTTP. Every request
is logged (method, path, headers) so tests can count body downloads and see ``Range`` headers.

``drop_once(repo, path, after_bytes)`` makes the next ``GET`` of that file send its full ``Content-Length``
but close the connection after ``after_bytes`` bytes of body: an interrupted download.

Use as a context manager; it binds 127.0.0.1 on a free port and shuts down on exit::

    with HubServer() as hub:
        hub.add_file("owner/repo", "dir/file.bin", data)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass
class _State:
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    drops: dict[tuple[str, str], int] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State  # set on the subclass made per server

    def log_message(self, format, *args):  # quiet: the request log is kept in ``state.log``
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        with self.state.lock:
            self.state.log.append(Request(self.command, unquote(self.path), headers))
        match = _RESOLVE.match(unquote(self.path.split("?")[0]))
        if match is None:
            return self._error(404, "RepoNotFound")
        repo, revision, path = match["repo"], match["revision"], match["path"]
        if not any(r == repo for r, _ in self.state.files):
            return self._error(404, "RepoNotFound")
        if revision not in ("main", COMMIT):
            return self._error(404, "RevisionNotFound")
        data = self.state.files.get((repo, path))
        if data is None:
            return self._error(404, "EntryNotFound")
        start, status = 0, 200
        range_match = _RANGE.match(self.headers.get("Range", ""))
        if body and range_match:
            start, status = int(range_match[1]), 206
        payload = data[start:]
        self.send_response(status)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        with self.state.lock:
            drop_after = self.state.drops.pop((repo, path), None)
        if drop_after is not None:
            self.wfile.write(payload[:drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # SHUT_RDWR: the client sees a short body
            return
        self.wfile.write(payload)

    def _error(self, code: int, error_code: str) -> None:
        message = f"{error_code}: {self.path}".encode()
        self.send_response(code)
        if error_code == "EntryNotFound":
            self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Length", str(len(message)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(message)


class HubServer:
    """A hub on ``http://127.0.0.1:PORT`` serving in-memory files; see the module docstring."""

    def __init__(self) -> None:
        self._state = _State()
        handler = type("Handler", (_Handler,), {"state": self._state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[Request]:
        with self._state.lock:
            return list(self._state.log)

    def add_file(self, repo: str, path: str, data: bytes) -> None:
        self._state.files[(repo, path)] = data

    def drop_once(self, repo: str, path: str, after_bytes: int) -> None:
        self._state.drops[(repo, path)] = after_bytes

    def body_requests(self, path: str) -> list[Request]:
        """The GET requests for a file whose path ends with ``path``."""
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + path)]

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
