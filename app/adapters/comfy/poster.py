"""`POST /prompt`, the one request every render makes, over a lean keep-alive connection.

httpx's client machinery (building the request, cookies, auth and redirect hooks, the
pool) cost 0.69 ms of CPU per `POST /prompt` against 0.26 ms for the standard library's
`http.client` on the same kept-alive connection (issue 13: about a tenth of the render
worker's CPU per job). Every other call to ComfyUI stays on httpx; this one is on the
render's serial chain.

One connection per thread (a render worker's slots post at once), kept alive between
prompts. One that the server closed while idle (a restart, aiohttp's keep-alive timeout)
is noticed before it is used and opened again, and any failure drops the connection,
so the next call starts afresh. Proxy variables are ignored, as for every call to
ComfyUI (a private service beside us).
"""

from __future__ import annotations

import http.client
import select
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.core.errors import ComfyUnavailable

#: A connection idle longer than this is opened again rather than trusted (ComfyUI's
#: aiohttp closes idle ones after 75 s; a new one costs a millisecond).
IDLE_REUSE_S = 30.0


@dataclass(frozen=True, slots=True)
class Answer:
    """ComfyUI's answer: the status and the body."""

    status: int
    body: bytes


@dataclass(slots=True)
class _Kept:
    connection: http.client.HTTPConnection
    used_at: float


class PromptPoster:
    """POSTs JSON bodies to one ComfyUI over a kept-alive connection per thread."""

    def __init__(self, base_url: str, *, timeout_s: float, connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._local = threading.local()

    def post_json(self, path: str, body: bytes) -> Answer:
        """POST `body` (JSON) to `path`; `ComfyUnavailable` if there is no answer."""
        kept = self._connection()
        try:
            kept.connection.request(
                "POST", self._prefix + path, body=body, headers={"Content-Type": "application/json"}
            )
            response = kept.connection.getresponse()
            answer = Answer(response.status, response.read())
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise ComfyUnavailable(
                f"ComfyUI at {self._host} did not answer POST {path}: {type(exc).__name__}"
            ) from exc
        kept.used_at = time.monotonic()
        return answer

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._drop()

    def _connection(self) -> _Kept:
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None and self._reusable(kept):
            return kept
        self._drop()
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self._connect_timeout_s)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise ComfyUnavailable(
                f"ComfyUI at {self._host} did not accept a connection: {type(exc).__name__}"
            ) from exc
        if connection.sock is not None:
            connection.sock.settimeout(self._timeout_s)
        kept = _Kept(connection, time.monotonic())
        self._local.kept = kept
        return kept

    def _reusable(self, kept: _Kept) -> bool:
        """Open, recently used, and not readable while idle (readable: the server closed
        it, or sent what nobody asked for)."""
        sock = kept.connection.sock
        if sock is None or time.monotonic() - kept.used_at > IDLE_REUSE_S:
            return False
        poller = select.poll()  # not select(): that fails on descriptors past 1023
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)

    def _drop(self) -> None:
        kept: _Kept | None = getattr(self._local, "kept", None)
        self._local.kept = None
        if kept is not None:
            kept.connection.close()
