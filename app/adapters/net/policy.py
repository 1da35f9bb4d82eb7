"""The URL policy for inputs and webhooks, as pure logic (no DNS, no sockets).

`parse_url` turns a user's URL into a `Target` whose parts are canonical: the client builds
the request from the Target, never from the raw string, so whatever another parser might
make of an odd URL, what is contacted is exactly what was checked. Numeric hosts are read
the way a resolver (inet_aton) or browser (WHATWG) would read them, so `0x7f.1` is known
to mean 127.0.0.1; anything but the canonical dotted quad is refused outright.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from app.adapters.net.addresses import IPAddress, IPNetwork, classify_address, parse_ip
from app.core.errors import UrlRefused

if TYPE_CHECKING:
    from app.core.config import Settings

__all__ = [
    "Target",
    "UrlPolicy",
    "check_addresses",
    "classify_address",
    "parse_url",
]

MAX_URL_CHARS = 8192
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
# Characters that are not allowed raw in a request target; they are percent-encoded.
_PATH_SAFE = "!$&'()*+,;=:@/?%-._~[]"


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """What the fetcher may contact: schemes, ports, and private ranges let through."""

    allow_http: bool = False
    allowed_ports: frozenset[int] = frozenset({80, 443})
    allow_cidrs: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        """Build the policy from `fetch_allow_http`, `fetch_allowed_ports`, `fetch_allow_cidrs`."""
        return cls(
            allow_http=settings.fetch_allow_http,
            allowed_ports=frozenset(settings.fetch_allowed_ports),
            allow_cidrs=parse_cidrs(settings.fetch_allow_cidrs),
        )

    def refusal_for(self, address: IPAddress | str) -> str | None:
        """Why `address` is forbidden under this policy, or None."""
        return classify_address(address, self.allow_cidrs)


def parse_cidrs(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings (host bits are masked off: `127.0.0.1/8` means 127.0.0.0/8)."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL, split into the canonical parts the client connects with."""

    scheme: str
    #: Lower-case ASCII (IDNA) host name, or an IP address without brackets.
    host: str
    port: int
    #: Origin-form request target, always starting with `/`; the fragment is dropped.
    path_and_query: str
    host_is_ip: bool

    @property
    def authority(self) -> str:
        """`host[:port]` as it appears in a URL and the Host header (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if _DEFAULT_PORTS.get(self.scheme) == self.port:
            return host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The canonical URL the client requests."""
        return f"{self.scheme}://{self.authority}{self.path_and_query}"


def _refuse(url: str, reason: str) -> UrlRefused:
    shown = url if len(url) <= 200 else url[:200] + "..."
    return UrlRefused(f"URL {shown!r} refused: {reason}")


def parse_url(url: str, policy: UrlPolicy) -> Target:
    """Check `url` against the policy and return its canonical parts; raise UrlRefused."""
    if len(url) > MAX_URL_CHARS:
        raise _refuse(url, f"longer than {MAX_URL_CHARS} characters")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        # urlsplit silently drops tabs and newlines; other parsers may not.
        raise _refuse(url, "it contains control characters")
    if "\\" in url:
        raise _refuse(url, "it contains a backslash (browsers read it as '/')")
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise _refuse(url, f"it is not a valid URL ({exc})") from exc

    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        shown = f"scheme {scheme!r}" if scheme else "a missing scheme"
        raise _refuse(url, f"{shown} is not allowed (only http and https)")
    if scheme == "http" and not policy.allow_http:
        raise _refuse(url, "plain http is not allowed; use https")
    netloc = parts.netloc
    if "@" in netloc:
        raise _refuse(url, "credentials (user@host) are not allowed in URLs")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise _refuse(url, "a host is required")
    try:
        explicit_port = parts.port
    except ValueError as exc:
        raise _refuse(url, "the port is not a number between 0 and 65535") from exc
    port = explicit_port if explicit_port is not None else _DEFAULT_PORTS[scheme]
    if port not in policy.allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(policy.allowed_ports)) or "none"
        raise _refuse(url, f"port {port} is not allowed (allowed: {allowed})")

    address: IPAddress | None
    if "[" in netloc:
        host, address = _ip_literal(url, raw_host)
    else:
        host, address = _host_name(url, raw_host)
    if address is not None:
        reason = policy.refusal_for(address)
        if reason is not None:
            raise _refuse(url, f"{address} is {reason}")

    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if not path.startswith("/"):
        path = "/" + path
    if parts.query:
        path += "?" + quote(parts.query, safe=_PATH_SAFE)
    return Target(
        scheme=scheme,
        host=host,
        port=port,
        path_and_query=path,
        host_is_ip=address is not None,
    )


def _ip_literal(url: str, raw_host: str) -> tuple[str, IPAddress]:
    """A bracketed IPv6 literal: `[::1]`. Zone ids (`%25eth0`) and IPvFuture are refused."""
    if "%" in raw_host:
        raise _refuse(url, "IPv6 zone identifiers are not allowed")
    try:
        address = ipaddress.IPv6Address(raw_host)
    except ValueError as exc:
        raise _refuse(url, f"{raw_host!r} is not a valid IPv6 address") from exc
    return address.compressed, address


def _host_name(url: str, raw_host: str) -> tuple[str, IPAddress | None]:
    """A DNS name or a dotted-quad IPv4 address, after IDNA and numeric normalisation."""
    host = raw_host
    if "%" in host:
        # WHATWG URL parsers percent-decode hosts (%31%32%37.0.0.1 is 127.0.0.1).
        raise _refuse(url, "percent-encoded host names are not allowed")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise _refuse(url, "the host is not a valid internationalised domain name") from exc
    host = host.lower()
    host = host.removesuffix(".")
    labels = host.split(".")
    if not host or len(host) > 253 or not all(labels):
        raise _refuse(url, f"{raw_host!r} is not a valid host name")

    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # WHATWG: a host whose last label is a number is an IPv4 address, however spelled.
        address = _inet_aton(labels)
        if address is None:
            raise _refuse(url, f"{raw_host!r} looks numeric but is not a valid IPv4 address")
        if host != str(address):
            reason = classify_address(address)
            meaning = f"{address}, {reason}" if reason else str(address)
            raise _refuse(
                url, f"{raw_host!r} is a non-canonical IPv4 spelling (it means {meaning})"
            )
        return host, address

    for label in labels:
        if not _LABEL.fullmatch(label):
            raise _refuse(url, f"{raw_host!r} is not a valid host name")
    if host == "localhost" or host.endswith(".localhost"):
        raise _refuse(url, f"{raw_host!r} is a loopback name")
    return host, None


def _inet_aton(labels: list[str]) -> ipaddress.IPv4Address | None:
    """Read 1-4 decimal/octal/hex parts as inet_aton and browsers do; None if invalid."""
    if len(labels) > 4:
        return None
    numbers: list[int] = []
    for label in labels:
        try:
            if label.startswith("0x"):
                numbers.append(int(label[2:] or "0", 16))
            elif len(label) > 1 and label.startswith("0"):
                numbers.append(int(label, 8))
            else:
                numbers.append(int(label, 10))
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def check_addresses(target: Target, addresses: Sequence[str], policy: UrlPolicy) -> list[IPAddress]:
    """Classify every resolved address; return them all, or raise UrlRefused naming the bad one."""
    if not addresses:
        raise UrlRefused(f"host {target.host!r} did not resolve to any address")
    checked: list[IPAddress] = []
    for text in addresses:
        try:
            address = parse_ip(text)
        except ValueError as exc:
            raise UrlRefused(f"host {target.host!r} resolved to {text!r}, not an address") from exc
        reason = policy.refusal_for(address)
        if reason is not None:
            raise UrlRefused(f"host {target.host!r} resolves to {address}, {reason}")
        if address not in checked:
            checked.append(address)
    return checked
