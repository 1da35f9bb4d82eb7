"""An httpx transport that connects only to addresses checked in advance, before a deadline.

httpx resolves host names itself when it connects, which would be a second DNS lookup after
the policy check (the window DNS rebinding uses). Here the httpcore network backend is
replaced: it accepts only the one origin it was built for and connects to the already-checked
IP addresses, while httpcore still sends the Host header and does TLS (SNI and certificate
verification) against the original host name, because both come from the request URL, not
from the socket. Every socket operation is also cut off at a wall-clock deadline, so a
server that drips one byte at a time (headers or body) cannot keep a request alive.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

from app.adapters.net.addresses import IPAddress

__all__ = ["Deadline", "DeadlineStream", "PinnedBackend", "PinnedTransport"]

#: A `time.monotonic()` instant, or a function giving the current request's (a kept
#: connection serves one request after another, each with its own deadline).
Deadline = float | Callable[[], float]


def _remaining(deadline: Deadline, timeout: float | None, exc: type[Exception]) -> float:
    """The time an operation may take: its own timeout, cut to what is left of the deadline."""
    left = (deadline() if callable(deadline) else deadline) - time.monotonic()
    if left <= 0:
        raise exc("the deadline for this request has passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads, writes and TLS handshake all end by `deadline`."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read up to `max_bytes`, waiting no later than the deadline."""
        budget = _remaining(self._deadline, timeout, httpcore.ReadTimeout)
        return self._inner.read(max_bytes, budget)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write `buffer`, waiting no later than the deadline."""
        self._inner.write(buffer, _remaining(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the underlying stream."""
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """Upgrade to TLS for `server_hostname` (the URL's host, not the pinned IP)."""
        budget = _remaining(self._deadline, timeout, httpcore.ConnectTimeout)
        tls = self._inner.start_tls(ssl_context, server_hostname, budget)
        return DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        """Pass through `server_addr`, `ssl_object` and friends."""
        return self._inner.get_extra_info(info)


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower().rstrip(".") == b.lower().rstrip(".")


class PinnedBackend(httpcore.NetworkBackend):
    """Connects `host:port` to the given checked addresses only; refuses any other origin."""

    def __init__(
        self,
        host: str,
        port: int,
        addresses: Sequence[IPAddress],
        deadline: Deadline,
        inner: httpcore.NetworkBackend | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("at least one checked address is required")
        self._host = host
        self._port = port
        self._addresses = tuple(addresses)
        self._deadline = deadline
        self._inner = inner if inner is not None else httpcore.SyncBackend()
        #: The address of each connection made, in order (for logs and tests).
        self.connected: list[IPAddress] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect to the first reachable checked address; never resolves `host` again."""
        if port != self._port or not _same_host(host, self._host):
            raise httpcore.ConnectError(f"refusing to connect to unchecked origin {host}:{port}")
        error: Exception | None = None
        for address in self._addresses:
            budget = _remaining(self._deadline, timeout, httpcore.ConnectTimeout)
            try:
                # A numeric host: SyncBackend's getaddrinfo does no DNS lookup for it.
                stream = self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=budget,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            self.connected.append(address)
            return DeadlineStream(stream, self._deadline)
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Unix sockets are never a fetch target."""
        raise httpcore.ConnectError("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        """Sleep (httpcore uses it between connection retries, which are disabled here)."""
        time.sleep(seconds)


def _caused_by_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def _mapped_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise httpcore's errors as httpx's, as httpx's own transport does."""
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise httpx.TimeoutException(str(exc) or "timed out", request=request) from exc
    except httpcore.ConnectError as exc:
        if _caused_by_tls(exc):
            # A certificate that does not verify will not verify on a retry either.
            raise httpx.TransportError(str(exc), request=request) from exc
        raise httpx.ConnectError(str(exc) or "connection failed", request=request) from exc
    except (
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
        httpcore.ConnectionNotAvailable,
    ) as exc:
        raise httpx.TransportError(str(exc) or type(exc).__name__, request=request) from exc


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _mapped_errors(self._request):
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class PinnedTransport(httpx.BaseTransport):
    """An HTTP/1.1 transport over a `PinnedBackend`: one origin, checked addresses, no retries."""

    def __init__(self, backend: PinnedBackend, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=1,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through the pinned connection pool."""
        assert isinstance(request.stream, httpx.SyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped_errors(request):
            response = self._pool.handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    def close(self) -> None:
        """Close the pool and its connection."""
        self._pool.close()
