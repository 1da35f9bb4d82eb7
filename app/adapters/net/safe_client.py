"""The SSRF-safe HTTP client: downloads input media and posts webhooks.

For each hop: check the URL (`parse_url`), resolve the host once, refuse if any resolved
address is forbidden, then connect to those checked addresses only (`PinnedTransport`).
Redirects are followed by hand so every hop is checked again; webhooks never follow them.
One wall-clock deadline covers DNS, every hop, and every socket read and write.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin

import httpx

from app.adapters.net.addresses import IPAddress
from app.adapters.net.kept import KeptClients
from app.adapters.net.pinned import PinnedBackend, PinnedTransport
from app.adapters.net.policy import Target, UrlPolicy, check_addresses, parse_url
from app.core.errors import (
    DeliveryFailed,
    FetchFailed,
    FetchUnavailable,
    PipelineError,
    StageCancelled,
    UrlRefused,
)

__all__ = [
    "DownloadResult",
    "PostResult",
    "Resolver",
    "SafeHttpClient",
    "parse_retry_after",
    "system_resolver",
]

#: (host, port) -> IP address strings, in the order to try them.
Resolver = Callable[[str, int], list[str]]

DEFAULT_USER_AGENT = "comfyui-saas/0.1"
#: How much of a webhook receiver's answer is kept (its body is only ever logged).
MAX_POST_RESPONSE_BYTES = 4096
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Retry-After as delta-seconds: ASCII digits only, so a header can never crash int().
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")
#: Answers that say "not now" rather than "never": the fetch stage tries again later.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver (getaddrinfo), de-duplicated, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """What a finished download produced."""

    #: The URL the body came from, after redirects (canonical form).
    final_url: str
    size: int
    #: The server's Content-Type, lower-case, without parameters; None if absent.
    declared_content_type: str | None
    #: The checked IP address the body was fetched from.
    remote_address: str


@dataclass(frozen=True, slots=True)
class PostResult:
    """A webhook receiver's answer; redirects are returned, not followed."""

    status_code: int
    #: Lower-case names; repeated headers are joined with ", ".
    headers: dict[str, str]
    retry_after_s: float | None
    #: The first MAX_POST_RESPONSE_BYTES of the body.
    body: bytes = b""


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _media_type(value: str | None) -> str | None:
    if not value:
        return None
    media_type = value.split(";", 1)[0].strip().lower()
    return media_type or None


class SafeHttpClient:
    """HTTP for user-supplied URLs: policy-checked, DNS-pinned, size- and time-bounded."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        resolver: Resolver | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy
        self._resolver = resolver if resolver is not None else system_resolver
        self._user_agent = user_agent
        # Built once: loading the CA bundle costs tens of milliseconds.
        self._ssl_context = (
            ssl_context if ssl_context is not None else httpx.create_ssl_context(trust_env=False)
        )
        #: Webhook receivers get their connection reused (`app.adapters.net.kept`).
        self._kept = KeptClients(ssl_context=self._ssl_context, user_agent=user_agent)

    # --- downloads -----------------------------------------------------------------------

    def download(
        self,
        url: str,
        dest: Path,
        *,
        max_bytes: int,
        timeout_s: float,
        max_redirects: int,
        should_cancel: Callable[[], bool] | None = None,
    ) -> DownloadResult:
        """Download `url` to `dest` within `timeout_s` in all; raise UrlRefused or FetchFailed.

        `dest` appears only when the download is complete; a partial file is removed.
        `should_cancel` is asked between chunks; True stops at once with `StageCancelled`.
        """
        deadline = time.monotonic() + timeout_s
        current = url
        for hop in range(max_redirects + 1):
            target = parse_url(current, self.policy)
            addresses = self._resolve(target, deadline, FetchFailed)
            headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
            try:
                with self._exchange("GET", target, addresses, deadline, headers) as (
                    response,
                    backend,
                ):
                    if response.status_code in _REDIRECTS:
                        current = self._next_hop(target, response, hop, max_redirects)
                        continue
                    if not 200 <= response.status_code < 300:
                        failure = (
                            FetchUnavailable
                            if response.status_code in _RETRYABLE_STATUS
                            else FetchFailed
                        )
                        raise failure(f"{target.authority} answered HTTP {response.status_code}")
                    size = self._save(
                        response,
                        dest,
                        max_bytes=max_bytes,
                        deadline=deadline,
                        should_cancel=should_cancel or _never,
                    )
                    return DownloadResult(
                        final_url=target.url,
                        size=size,
                        declared_content_type=_media_type(response.headers.get("content-type")),
                        remote_address=str(backend.connected[-1]),
                    )
            except httpx.TimeoutException as exc:
                raise FetchFailed(f"download did not finish within {timeout_s:g} s") from exc
            except httpx.ConnectError as exc:
                raise FetchUnavailable(
                    f"could not connect to {target.authority}: {_short(exc)}"
                ) from exc
            except httpx.HTTPError as exc:
                raise FetchFailed(
                    f"download from {target.authority} failed: {_short(exc)}"
                ) from exc
        raise AssertionError("unreachable: the last hop returns or raises")  # pragma: no cover

    @staticmethod
    def _next_hop(target: Target, response: httpx.Response, hop: int, max_redirects: int) -> str:
        location = response.headers.get("location")
        if not location:
            raise FetchFailed(
                f"{target.authority} answered HTTP {response.status_code} without a Location"
            )
        if hop >= max_redirects:
            raise FetchFailed(f"too many redirects (more than {max_redirects})")
        return str(urljoin(target.url, location.strip()))

    @staticmethod
    def _save(
        response: httpx.Response,
        dest: Path,
        *,
        max_bytes: int,
        deadline: float,
        should_cancel: Callable[[], bool],
    ) -> int:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchFailed(f"the server sent content-encoding {encoding!r}, not the raw file")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise FetchFailed(
                f"the server declares {int(declared)} bytes, over the limit of {max_bytes}"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.part")
        size = 0
        try:
            with partial.open("wb") as out:
                # No chunk size: each read is handed over as it arrives, so a slow server
                # cannot hold off the cancel check until 64 KiB have trickled in.
                for chunk in response.iter_raw():
                    if should_cancel():
                        raise StageCancelled("the job was cancelled while its inputs downloaded")
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchFailed(f"the body is over the limit of {max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the download deadline passed")
                    out.write(chunk)
            os.replace(partial, dest)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return size

    # --- webhooks ------------------------------------------------------------------------

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> PostResult:
        """POST `body` once, without following redirects; raise UrlRefused or DeliveryFailed."""
        deadline = time.monotonic() + timeout_s
        target = parse_url(url, self.policy)
        addresses = self._resolve(target, deadline, DeliveryFailed)
        try:
            with (
                self._kept.take(target, addresses, deadline) as kept,
                self._exchange("POST", target, addresses, deadline, headers, body, kept=kept) as (
                    response,
                    _backend,
                ),
            ):
                head = bytearray()
                for chunk in response.iter_raw(MAX_POST_RESPONSE_BYTES):
                    head += chunk
                    if len(head) >= MAX_POST_RESPONSE_BYTES:
                        break
                return PostResult(
                    status_code=response.status_code,
                    headers={k.lower(): v for k, v in response.headers.items()},
                    retry_after_s=parse_retry_after(response.headers.get("retry-after")),
                    body=bytes(head[:MAX_POST_RESPONSE_BYTES]),
                )
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(
                f"{target.authority} did not answer within {timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"could not deliver to {target.authority}: {_short(exc)}") from exc

    # --- shared --------------------------------------------------------------------------

    def _resolve(
        self, target: Target, deadline: float, error: type[PipelineError]
    ) -> list[IPAddress]:
        """Resolve once, within the deadline, and check every address; raise UrlRefused."""
        if target.host_is_ip:
            return check_addresses(target, [target.host], self.policy)
        outcome: list[list[str] | BaseException] = []

        def work() -> None:
            try:
                outcome.append(self._resolver(target.host, target.port))
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                outcome.append(exc)

        # getaddrinfo cannot be given a timeout; a daemon thread lets the deadline win.
        thread = threading.Thread(target=work, name="safe-client-resolve", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        if not outcome:
            raise error(f"resolving {target.host!r} did not finish before the deadline")
        result = outcome[0]
        if isinstance(result, OSError | UnicodeError):
            raise error(f"could not resolve {target.host!r}: {_short(result)}") from result
        if isinstance(result, BaseException):
            raise result
        return check_addresses(target, result, self.policy)

    @contextmanager
    def _exchange(
        self,
        method: str,
        target: Target,
        addresses: list[IPAddress],
        deadline: float,
        headers: Mapping[str, str],
        content: bytes | None = None,
        *,
        kept: tuple[httpx.Client, PinnedBackend] | None = None,
    ) -> Iterator[tuple[httpx.Response, PinnedBackend]]:
        """One request to the checked addresses: on a `kept` client pinned to exactly these
        (its cookies cleared), else on a fresh one, so no cookies carry over."""
        left_s = max(0.001, deadline - time.monotonic())
        if kept is not None:
            client, backend = kept
            with self._send(client, method, target, headers, content, left_s) as response:
                yield response, backend
            return
        backend = PinnedBackend(target.host, target.port, addresses, deadline)
        transport = PinnedTransport(backend, self._ssl_context)
        with (
            httpx.Client(
                transport=transport,
                trust_env=False,
                follow_redirects=False,
                headers={"User-Agent": self._user_agent},
            ) as client,
            self._send(client, method, target, headers, content, left_s) as response,
        ):
            yield response, backend

    @staticmethod
    @contextmanager
    def _send(
        client: httpx.Client,
        method: str,
        target: Target,
        headers: Mapping[str, str],
        content: bytes | None,
        left_s: float,
    ) -> Iterator[httpx.Response]:
        request = client.build_request(
            method, target.url, headers=headers, content=content, timeout=httpx.Timeout(left_s)
        )
        if request.url.port not in (None, target.port) or not request.url.host:
            raise UrlRefused(f"URL {target.url!r} did not round-trip through httpx")
        response = client.send(request, stream=True)
        try:
            yield response
        finally:
            response.close()


def _never() -> bool:
    return False
