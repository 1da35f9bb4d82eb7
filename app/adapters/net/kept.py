"""Webhook connections kept per destination: one pinned client per origin, reused.

A new httpx client per webhook cost 2-3 ms of CPU and a TCP (and TLS) handshake per
delivery (issue 13). A destination is (scheme, host, port) *and* the exact addresses the
delivery just resolved and checked: every delivery still resolves and checks first, and
when DNS answers differently it gets a client pinned to the new addresses, so reuse never
skips the policy. One request at a time per destination (its lock): a delivery that finds
it busy gets None and uses a one-off client instead of waiting. Cookies are cleared
before each request, so no receiver state carries from one delivery to the next. At most
`max_destinations` are kept (least recently used goes first).
"""

from __future__ import annotations

import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from app.adapters.net.addresses import IPAddress
from app.adapters.net.pinned import PinnedBackend, PinnedTransport
from app.adapters.net.policy import Target

#: Destinations kept at once (each holds at most one idle connection).
MAX_DESTINATIONS = 32

_Key = tuple[str, str, int, tuple[str, ...]]


@dataclass
class _Kept:
    client: httpx.Client
    backend: PinnedBackend
    #: The current request's deadline (read by the pinned streams at every operation).
    deadline: list[float] = field(default_factory=lambda: [0.0])
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close_when_idle(self) -> None:
        """Close it now if no request uses it; else leave it to the garbage collector."""
        if self.lock.acquire(blocking=False):
            try:
                self.client.close()
            finally:
                self.lock.release()


class KeptClients:
    """Pinned httpx clients by destination, for requests that may reuse a connection."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        user_agent: str,
        max_destinations: int = MAX_DESTINATIONS,
    ) -> None:
        self._ssl_context = ssl_context
        self._user_agent = user_agent
        self._max = max_destinations
        self._lock = threading.Lock()
        self._kept: OrderedDict[_Key, _Kept] = OrderedDict()

    def _new(self, target: Target, addresses: list[IPAddress]) -> _Kept:
        deadline = [0.0]
        backend = PinnedBackend(target.host, target.port, addresses, lambda: deadline[0])
        client = httpx.Client(
            transport=PinnedTransport(backend, self._ssl_context),
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": self._user_agent},
        )
        return _Kept(client=client, backend=backend, deadline=deadline)

    @contextmanager
    def take(
        self, target: Target, addresses: list[IPAddress], deadline: float
    ) -> Iterator[tuple[httpx.Client, PinnedBackend] | None]:
        """The destination's client for one request ending by `deadline`, or None if
        another request is using it right now."""
        key = (target.scheme, target.host, target.port, tuple(str(a) for a in addresses))
        evicted: list[_Kept] = []
        with self._lock:
            kept = self._kept.pop(key, None) or self._new(target, addresses)
            self._kept[key] = kept  # most recently used last
            while len(self._kept) > self._max:
                evicted.append(self._kept.popitem(last=False)[1])
        for old in evicted:
            old.close_when_idle()
        if not kept.lock.acquire(blocking=False):
            yield None
            return
        try:
            kept.deadline[0] = deadline
            kept.client.cookies.clear()
            yield kept.client, kept.backend
        finally:
            kept.lock.release()

    def close(self) -> None:
        """Close every kept client that is idle."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), OrderedDict()
        for one in kept:
            one.close_when_idle()
