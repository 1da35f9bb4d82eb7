"""A plain HTTP/1.1 keep-alive client on asyncio streams, for load that must cost little.

An httpx pool costs more CPU per request than the server it measures, on the same cores:
with 1,000 requests in flight its `AsyncClient` kept the load generator at a full core
while both ingress processes sat idle, so a burst "took" 38 s that the server answered
in a fraction of it (issue 13). This client writes one prepared request and reads one
answer (status line, headers, a `Content-Length` body), nothing more: the ingress
always sends a length and never chunks a JSON answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect, and the bytes of one request to send there."""

    host: str
    port: int
    request: bytes

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)


def endpoint(
    url: str, method: str = "GET", headers: Mapping[str, str] | None = None, body: bytes = b""
) -> Endpoint:
    """The request `method url` with `headers` and `body`, prepared once."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method != "GET":
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return Endpoint(host=host, port=port, request=head + body)


async def read_answer(reader: asyncio.StreamReader) -> int:
    """Read one answer off the connection; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


#: What a dropped or garbled connection raises while a request is sent or read.
CONNECTION_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)
