"""The URL policy: a table of hostile URLs, each refused for the stated reason."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from app.adapters.net.policy import (
    Target,
    UrlPolicy,
    check_addresses,
    classify_address,
    parse_cidrs,
    parse_url,
)
from app.core.config import Settings
from app.core.errors import UrlRefused

STRICT = UrlPolicy()
LENIENT = UrlPolicy(allow_http=True, allowed_ports=frozenset({80, 443, 8080}))

# (url, fragment of the refusal reason). Checked under the lenient policy (http and 8080
# allowed), so each is refused for its own reason and not merely for being plain http.
BAD_URLS: list[tuple[str, str]] = [
    # odd IPv4 spellings (inet_aton / WHATWG read them all as 127.0.0.1)
    ("http://2130706433/", "non-canonical IPv4 spelling (it means 127.0.0.1, a loopback"),
    ("http://0x7f000001/", "means 127.0.0.1"),
    ("http://0177.0.0.1/", "means 127.0.0.1"),
    ("http://127.1/", "means 127.0.0.1"),
    ("http://0x7f.1/", "means 127.0.0.1"),
    ("http://0x7f.0.0.1/", "means 127.0.0.1"),
    ("http://127.0.1/", "means 127.0.0.1"),
    ("http://017700000001/", "means 127.0.0.1"),
    ("http://0x08080808/", "non-canonical IPv4 spelling (it means 8.8.8.8)"),
    ("http://1.2.3.4.5/", "not a valid IPv4 address"),
    ("http://example.123/", "not a valid IPv4 address"),
    ("http://%31%32%37.0.0.1/", "percent-encoded host"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "127.0.0.1 is a loopback"),
    # plain IPv4 in forbidden ranges
    ("http://127.0.0.1/", "a loopback address"),
    ("http://127.0.0.1./", "a loopback address"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://10.1.2.3/", "private address (RFC 1918)"),
    ("http://172.16.0.1/", "private address (RFC 1918)"),
    ("http://172.31.255.255/", "private address (RFC 1918)"),
    ("http://192.168.1.1/", "private address (RFC 1918)"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://169.254.1.1/", "link-local"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://169.254.170.2/v2/credentials", "cloud metadata"),
    ("http://100.100.100.200/latest/meta-data/", "cloud metadata"),
    ("http://168.63.129.16/", "cloud metadata"),
    ("http://192.0.0.1/", "IETF protocol assignment"),
    ("http://192.0.2.1/", "documentation"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.9/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "broadcast"),
    # IPv6 literals
    ("http://[::1]/", "a loopback address"),
    ("http://[::]/", "unspecified"),
    ("http://[0:0:0:0:0:0:0:1]/", "a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped address (::ffff:0:0/96) embedding 127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "IPv4-mapped address (::ffff:0:0/96) embedding 127.0.0.1"),
    ("http://[::ffff:a9fe:a9fe]/", "embedding 169.254.169.254, a cloud metadata"),
    ("http://[::ffff:8.8.8.8]/", "IPv4-mapped"),
    ("http://[::ffff:0:7f00:1]/", "IPv4-translated"),
    ("http://[::127.0.0.1]/", "IPv4-compatible"),
    ("http://[64:ff9b::7f00:1]/", "NAT64 address (64:ff9b::/96) embedding 127.0.0.1"),
    ("http://[64:ff9b::a00:1]/", "embedding 10.0.0.1, a private"),
    ("http://[64:ff9b:1::1]/", "local-use NAT64"),
    ("http://[2002:7f00:1::]/", "6to4 address (2002::/16) embedding 127.0.0.1"),
    ("http://[2002:a9fe:a9fe::1]/", "embedding 169.254.169.254"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
    ("http://[2001::1]/", "Teredo"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fd12:3456::1]/", "unique-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "zone identifiers"),
    ("http://[fe80::1%eth0]/", "zone identifiers"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[3fff::1]/", "documentation"),
    ("http://[100::1]/", "discard-only"),
    ("http://[2001:10::1]/", "IETF protocol assignment"),
    ("http://[4000::1]/", "outside global unicast"),
    ("http://[v1.fe80::a+en1]/", "not a valid"),
    ("http://[::1/", "not a valid"),
    # names
    ("http://localhost/", "loopback name"),
    ("http://LOCALHOST./", "loopback name"),
    ("http://foo.localhost/", "loopback name"),
    ("http://exa mple.com/", "not a valid host name"),
    ("http://a..b.com/", "not a valid host name"),
    ("http://-bad-.com/", "not a valid host name"),
    ("http://" + "a" * 64 + ".com/", "not a valid host name"),
    # userinfo tricks
    ("http://example.com@127.0.0.1/", "credentials"),
    ("http://user:pass@example.com/", "credentials"),
    ("http://@example.com/", "credentials"),
    ("http://example.com:80@169.254.169.254/", "credentials"),
    ("http://127.0.0.1\\@example.com/", "backslash"),
    # schemes
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://example.com:70/_x", "scheme 'gopher'"),
    ("ftp://example.com/x", "scheme 'ftp'"),
    ("dict://example.com:11211/stat", "scheme 'dict'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("data:text/plain,hello", "scheme 'data'"),
    ("ldap://example.com/", "scheme 'ldap'"),
    ("ws://example.com/", "scheme 'ws'"),
    ("//example.com/x", "missing scheme"),
    ("example.com/x", "missing scheme"),
    # ports
    ("http://example.com:22/", "port 22 is not allowed"),
    ("http://example.com:6379/", "port 6379 is not allowed"),
    ("https://example.com:8443/", "port 8443 is not allowed"),
    ("http://example.com:0/", "port 0 is not allowed"),
    ("http://example.com:99999/", "port is not a number"),
    ("http://example.com:80:80/", "port is not a number"),
    # empty or malformed hosts
    ("http:///path", "a host is required"),
    ("http://:8080/", "a host is required"),
    ("http:example.com", "a host is required"),
    ("", "missing scheme"),
    # smuggling characters
    ("http://exam\tple.com/", "control characters"),
    ("http://example.com/\r\nHost: evil", "control characters"),
    ("http://example.com/" + "a" * 9000, "longer than 8192"),
]


@pytest.mark.parametrize(("url", "reason"), BAD_URLS, ids=[u[:60] for u, _ in BAD_URLS])
def test_bad_url_is_refused_with_reason(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused) as caught:
        parse_url(url, LENIENT)
    assert reason in str(caught.value)
    assert caught.value.code == "url_refused"


def test_the_table_is_big_enough() -> None:
    assert len(BAD_URLS) >= 40


@pytest.mark.parametrize(
    "url",
    ["http://example.com/", "http://93.184.215.14/", "https://example.com:8443/x"],
)
def test_strict_policy_refuses_http_and_other_ports(url: str) -> None:
    with pytest.raises(UrlRefused, match=r"plain http is not allowed|port 8443"):
        parse_url(url, STRICT)


GOOD_URLS: list[tuple[str, Target]] = [
    (
        "https://example.com/a/b.png?x=1&y=2#frag",
        Target("https", "example.com", 443, "/a/b.png?x=1&y=2", host_is_ip=False),
    ),
    ("HTTPS://Example.COM", Target("https", "example.com", 443, "/", host_is_ip=False)),
    ("https://example.com.:443/", Target("https", "example.com", 443, "/", host_is_ip=False)),
    ("https://8.8.8.8/x", Target("https", "8.8.8.8", 443, "/x", host_is_ip=True)),
    (
        "https://[2606:4700:4700:0::1111]/",
        Target("https", "2606:4700:4700::1111", 443, "/", host_is_ip=True),
    ),
    (
        "http://b\u00fccher.de:8080/\u00e9 t",
        Target("http", "xn--bcher-kva.de", 8080, "/%C3%A9%20t", host_is_ip=False),
    ),
    (
        "https://cdn.example.com/img.png?sig=a%2Fb",
        Target("https", "cdn.example.com", 443, "/img.png?sig=a%2Fb", host_is_ip=False),
    ),
    ("https://s3_bucket.example.com/k", Target("https", "s3_bucket.example.com", 443, "/k", False)),
]


@pytest.mark.parametrize(("url", "expected"), GOOD_URLS, ids=[u for u, _ in GOOD_URLS])
def test_good_url_is_accepted_and_canonicalised(url: str, expected: Target) -> None:
    assert parse_url(url, LENIENT) == expected


def test_target_url_round_trips() -> None:
    target = parse_url("http://[2606:4700::1111]:8080/p?q", LENIENT)
    assert target.url == "http://[2606:4700::1111]:8080/p?q"
    assert target.authority == "[2606:4700::1111]:8080"
    assert parse_url(target.url, LENIENT) == target
    assert parse_url("https://example.com:443/", LENIENT).url == "https://example.com/"


def test_allow_cidrs_lets_exactly_the_listed_network_through() -> None:
    # Given a policy that allows only 127.0.0.2/32
    policy = UrlPolicy(
        allow_http=True,
        allowed_ports=frozenset({80}),
        allow_cidrs=parse_cidrs(["127.0.0.2/32"]),
    )
    # Then 127.0.0.2 passes, its neighbours and embedded forms do not
    assert parse_url("http://127.0.0.2/x", policy).host == "127.0.0.2"
    for url in ("http://127.0.0.1/", "http://127.0.0.3/", "http://[::ffff:127.0.0.2]/"):
        with pytest.raises(UrlRefused):
            parse_url(url, policy)
    # And a non-canonical spelling is refused even when its address is allowed
    with pytest.raises(UrlRefused, match="non-canonical"):
        parse_url("http://0x7f000002/", policy)


def test_from_settings(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(
        fetch_allow_http=True,
        fetch_allowed_ports="80,8080",
        fetch_allow_cidrs="10.0.0.0/8, 127.0.0.1/8",
    )
    policy = UrlPolicy.from_settings(settings)
    assert policy.allow_http is True
    assert policy.allowed_ports == frozenset({80, 8080})
    assert policy.allow_cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.0/8"),
    )


def test_default_settings_give_a_strict_policy(
    settings_factory: Callable[..., Settings],
) -> None:
    policy = UrlPolicy.from_settings(settings_factory())
    assert policy == UrlPolicy(allow_http=False, allowed_ports=frozenset({80, 443}))


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "RFC 1918"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("169.254.169.254", "metadata"),
        ("fe80::1%eth0", "link-local"),
        ("::ffff:10.0.0.1", "embedding 10.0.0.1, a private address"),
        ("2002:0a00:0001::", "embedding 10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ],
)
def test_classify_address_reasons(address: str, reason: str) -> None:
    result = classify_address(address)
    assert result is not None
    assert reason in result


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001::1"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert classify_address(address) is None


def test_classify_address_allow_list() -> None:
    allowed = parse_cidrs(["10.1.0.0/16", "fd00::/8"])
    assert classify_address("10.1.2.3", allowed) is None
    assert classify_address("fd00::5", allowed) is None
    assert classify_address("10.2.0.1", allowed) == "a private address (RFC 1918)"


def test_check_addresses_refuses_if_any_address_is_forbidden() -> None:
    target = parse_url("https://example.com/", STRICT)
    assert check_addresses(target, ["8.8.8.8", "8.8.8.8", "2606:4700::1"], STRICT) == [
        ipaddress.ip_address("8.8.8.8"),
        ipaddress.ip_address("2606:4700::1"),
    ]
    with pytest.raises(UrlRefused, match=r"resolves to 10\.0\.0\.1, a private address"):
        check_addresses(target, ["8.8.8.8", "10.0.0.1"], STRICT)
    with pytest.raises(UrlRefused, match="did not resolve"):
        check_addresses(target, [], STRICT)
    with pytest.raises(UrlRefused, match="not an address"):
        check_addresses(target, ["not-an-ip"], STRICT)
