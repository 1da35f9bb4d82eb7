"""Tiny real HTTP servers for end-to-end tests: a file server and a webhook receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Site:
    """What the server serves and what it has received."""

    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    #: The first N webhook posts are answered 500 (to exercise retries).
    fail_first: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    host: str = ""
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def posts(self) -> list[Received]:
        with self.lock:
            return list(self.received)


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            found = site.files.get(self.path)
            if found is None:
                self.send_error(404)
                return
            body, content_type = found
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with site.lock:
                site.received.append(Received(self.path, dict(self.headers.items()), body))
                failing = site.fail_first > 0
                site.fail_first -= 1 if failing else 0
            self.send_response(500 if failing else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextmanager
def serve(host: str = "127.0.0.2") -> Iterator[Site]:
    """A file server and webhook receiver on `host`, stopped on exit."""
    site = Site(host=host)
    server = ThreadingHTTPServer((host, 0), _handler(site))
    server.daemon_threads = True
    site.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
