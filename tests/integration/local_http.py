"""A small threaded HTTP(S) server with hostile routes, for testing the SSRF-safe client.

Bind it on 127.0.0.2 (Linux routes all of 127/8 to loopback) and allow only that address in
the policy; a decoy bound on 127.0.0.1 at the same port proves nothing ever reaches an
address the policy refuses.
"""

from __future__ import annotations

import io
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def _png_1px() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1, 1), (255, 0, 0)).save(out, format="PNG")
    return out.getvalue()


PNG_1PX = _png_1px()
#: Longest any drip route keeps a connection alive, whatever the client does.
DRIP_MAX_S = 5.0


@dataclass
class Hit:
    """One request the server received."""

    method: str
    path: str
    host: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Recorder:
    hits: list[Hit] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, hit: Hit) -> None:
        with self.lock:
            self.hits.append(hit)

    def paths(self) -> list[str]:
        with self.lock:
            return [hit.path for hit in self.hits]


class _Handler(BaseHTTPRequestHandler):
    server: LocalServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _record(self, body: bytes = b"") -> None:
        self.server.recorder.add(
            Hit(
                method=self.command,
                path=self.path,
                host=self.headers.get("Host", ""),
                body=body,
                headers={k.lower(): v for k, v in self.headers.items()},
            )
        )

    def _raw(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._raw(body)

    def _drip(self, data: bytes, interval_s: float) -> None:
        started = time.monotonic()
        try:
            for byte in data:
                if time.monotonic() - started > DRIP_MAX_S:
                    return
                self._raw(bytes([byte]))
                time.sleep(interval_s)
        except OSError:
            return

    def do_GET(self) -> None:
        self._record()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        route = url.path
        if route == "/ok.png":
            self._send(200, PNG_1PX, {"Content-Type": "image/png; charset=binary"})
        elif route == "/echo-host":
            self._send(200, self.headers.get("Host", "").encode(), {"Content-Type": "text/plain"})
        elif route == "/redirect":
            status = int(query.get("status", ["302"])[0])
            self._send(status, b"", {"Location": query["to"][0]})
        elif route == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif route == "/no-location":
            self._send(302)
        elif route == "/missing":
            self._send(404, b"not here")
        elif route == "/status":
            self._send(int(query["code"][0]), b"try later", {"Retry-After": "1"})
        elif route == "/sized":
            size = int(query["n"][0])
            self._send(200, b"x" * size, {"Content-Type": "application/octet-stream"})
        elif route == "/unsized":
            # HTTP/1.0 style: no Content-Length, the body ends when the connection closes.
            self._raw(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            self._raw(b"x" * int(query["n"][0]))
            self.close_connection = True
        elif route == "/chunked":
            self._raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(int(query["chunks"][0])):
                self._raw(b"400\r\n" + b"y" * 0x400 + b"\r\n")
            self._raw(b"0\r\n\r\n")
        elif route == "/short":
            # Promises 100 bytes, sends 10, hangs up.
            self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n")
            self._raw(b"z" * 10)
            self.close_connection = True
        elif route == "/drip":
            self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            self._drip(b"d" * 1000, 0.1)
            self.close_connection = True
        elif route == "/drip-headers":
            self._drip(b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"s" * 1000, 0.1)
            self.close_connection = True
        elif route == "/gzip":
            self._send(200, b"\x1f\x8b\x08\x00", {"Content-Encoding": "gzip"})
        else:
            self._send(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self._record(body)
        route = urlsplit(self.path).path
        if route.startswith("/hook/status/"):
            status = int(route.rsplit("/", 1)[1])
            headers: dict[str, str] = {}
            if 300 <= status < 400:
                headers["Location"] = "/hook/followed"
            if status == 429:
                headers["Retry-After"] = "7"
            if status == 503:
                when = datetime.now(UTC) + timedelta(seconds=120)
                headers["Retry-After"] = format_datetime(when, usegmt=True)
            self._send(status, b"status body", headers)
        elif route == "/hook/big":
            self._send(200, b"b" * 1_000_000)
        elif route == "/hook/slow":
            time.sleep(3)
            self._send(200)
        else:
            self._send(204)


class LocalServer(ThreadingHTTPServer):
    """A threaded server that records what it receives; optionally speaks TLS."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.recorder = Recorder()
        self.tls = tls
        super().__init__(address, _Handler)
        if tls is not None:
            tls.sni_callback = self._on_sni

    def _on_sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.recorder.sni.append(name)

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake runs in the handler thread, so a bad client cannot stall accept().
        request.settimeout(DRIP_MAX_S)
        with self.tls.wrap_socket(request, server_side=True) as wrapped:
            super().finish_request(wrapped, client_address)

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        pass  # handshake failures and hang-ups are what several tests provoke

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def start(server: LocalServer) -> Callable[[], None]:
    """Serve in a daemon thread; return the function that stops it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def _stop_all(stops: list[Callable[[], None]]) -> Callable[[], None]:
    def stop_all() -> None:
        for stop in stops:
            stop()

    return stop_all


def start_pair(
    host: str = "127.0.0.2", decoy: str = "127.0.0.1"
) -> tuple[LocalServer, LocalServer, Callable[[], None]]:
    """A server on `host` and a decoy on `decoy` at the same port."""
    for _ in range(20):
        main = LocalServer((host, 0))
        try:
            spare = LocalServer((decoy, main.port))
        except OSError:
            main.server_close()
            continue
        return main, spare, _stop_all([start(main), start(spare)])
    raise RuntimeError("no port free on both addresses")
