"""Which IP addresses the fetcher may connect to (pure: no I/O).

The deny table follows Smokescreen's default set: everything that is not ordinary public
unicast is refused, with a reason a person can read. IPv6 forms that embed an IPv4 address
(mapped, NAT64, 6to4, Teredo, ...) are refused as a class, and the embedded address is named
in the reason so a log line shows what the URL was really aiming at.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = "a cloud metadata address"

# Order matters: the first matching network gives the reason, so specific entries
# (metadata addresses) come before the ranges that contain them.
_V4_DENY: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("169.254.169.254/32", _METADATA),  # AWS, GCP, Azure, OpenStack, Oracle
        ("169.254.170.2/32", _METADATA),  # AWS ECS task metadata
        ("100.100.100.200/32", _METADATA),  # Alibaba Cloud
        ("168.63.129.16/32", _METADATA),  # Azure wire server (a public address!)
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address (RFC 1918)"),
        ("172.16.0.0/12", "a private address (RFC 1918)"),
        ("192.168.0.0/16", "a private address (RFC 1918)"),
        ("100.64.0.0/10", "a carrier-grade NAT address (RFC 6598)"),
        ("169.254.0.0/16", "a link-local address"),
        ("192.0.0.0/24", "an IETF protocol assignment address (192.0.0.0/24)"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)

_V6_DENY: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("fd00:ec2::254/128", _METADATA),  # AWS IMDS over IPv6
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("100::/64", "a discard-only address"),
        ("2001:db8::/32", "a documentation address"),
        ("3fff::/20", "a documentation address"),
        ("2001:2::/48", "a benchmarking address"),
        ("fc00::/7", "a unique-local address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)

_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")
_IETF_V6 = ipaddress.IPv6Network("2001::/23")


def parse_ip(text: str) -> IPAddress:
    """Parse an IP address; raise ValueError if `text` is not one (scope ids are dropped)."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        # Compare and report the address itself; the zone only picks an interface.
        address = ipaddress.IPv6Address(int(address))
    return address


def _embedded_v4(address: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The class name and the IPv4 addresses hidden inside an IPv6 address, if any."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address in _MAPPED:
        return "an IPv4-mapped address (::ffff:0:0/96)", [low32]
    if address in _TRANSLATED:
        return "an IPv4-translated address (::ffff:0:0:0/96)", [low32]
    if address in _NAT64:
        return "a NAT64 address (64:ff9b::/96)", [low32]
    if address in _NAT64_LOCAL:
        return "a local-use NAT64 address (64:ff9b:1::/48)", [low32]
    if address in _TEREDO:
        teredo = address.teredo
        assert teredo is not None  # membership in 2001::/32 guarantees it
        return "a Teredo address (2001::/32)", [teredo[1], teredo[0]]
    if address in _SIXTOFOUR:
        sixtofour = address.sixtofour
        assert sixtofour is not None
        return "a 6to4 address (2002::/16)", [sixtofour]
    if address in _COMPATIBLE and int(address) > 1:
        return "an IPv4-compatible address (::/96, deprecated)", [low32]
    return None


def _classify_v4(address: ipaddress.IPv4Address) -> str | None:
    for network, reason in _V4_DENY:
        if address in network:
            return reason
    if not address.is_global:
        return "a non-public address"
    return None


def _describe_embedded(kind: str, embedded: list[ipaddress.IPv4Address]) -> str:
    parts = []
    for v4 in embedded:
        inner = _classify_v4(v4)
        parts.append(f"{v4}, {inner}" if inner else str(v4))
    return f"{kind} embedding {' and '.join(parts)}"


def _classify_v6(address: ipaddress.IPv6Address) -> str | None:
    for network, reason in _V6_DENY:
        if address in network:
            return reason
    embedded = _embedded_v4(address)
    if embedded is not None:
        return _describe_embedded(*embedded)
    if address in _IETF_V6:
        return "an IETF protocol assignment address (2001::/23)"
    if address not in _GLOBAL_UNICAST:
        return "a reserved address (outside global unicast 2000::/3)"
    if not address.is_global:
        return "a non-public address"
    return None


def classify_address(address: IPAddress | str, allow_cidrs: Iterable[IPNetwork] = ()) -> str | None:
    """Why `address` may not be contacted (e.g. "a loopback address"), or None if it may.

    An address inside one of `allow_cidrs` is always allowed; an IPv6 address that embeds an
    allowed IPv4 address is not (the allow list names exactly what it lets through).
    """
    ip = parse_ip(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        ip = ipaddress.IPv6Address(int(ip))
    for network in allow_cidrs:
        if ip.version == network.version and ip in network:
            return None
    if isinstance(ip, ipaddress.IPv4Address):
        return _classify_v4(ip)
    return _classify_v6(ip)
