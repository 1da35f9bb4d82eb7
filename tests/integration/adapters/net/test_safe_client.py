"""The SSRF-safe client against real local servers: pinning, redirects, caps, deadlines."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpcore
import pytest

from app.adapters.net.addresses import parse_ip
from app.adapters.net.pinned import PinnedBackend
from app.adapters.net.policy import UrlPolicy, parse_cidrs
from app.adapters.net.safe_client import DownloadResult, SafeHttpClient, parse_retry_after
from app.core.errors import (
    DeliveryFailed,
    FetchFailed,
    FetchUnavailable,
    StageCancelled,
    UrlRefused,
)
from tests.integration.local_http import PNG_1PX, LocalServer, start, start_pair

MAIN_IP = "127.0.0.2"


class FakeDNS:
    """A resolver that answers from a script and counts its lookups."""

    def __init__(self, answers: dict[str, list[list[str]]], delay_s: float = 0.0) -> None:
        self.answers = answers
        self.delay_s = delay_s
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        time.sleep(self.delay_s)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        script = self.answers[host]
        return script[min(self.calls.count(host), len(script)) - 1]


@dataclass
class Servers:
    main: LocalServer
    decoy: LocalServer
    policy: UrlPolicy

    def url(self, path: str, host: str = MAIN_IP) -> str:
        return f"http://{host}:{self.main.port}{path}"


@pytest.fixture(scope="module")
def server_pair() -> Iterator[tuple[LocalServer, LocalServer]]:
    main, decoy, stop = start_pair(MAIN_IP, "127.0.0.1")
    yield main, decoy
    stop()


@pytest.fixture
def servers(server_pair: tuple[LocalServer, LocalServer]) -> Servers:
    main, decoy = server_pair
    main.recorder.hits.clear()
    decoy.recorder.hits.clear()
    policy = UrlPolicy(
        allow_http=True,
        allowed_ports=frozenset({main.port}),
        allow_cidrs=parse_cidrs([f"{MAIN_IP}/32"]),
    )
    return Servers(main, decoy, policy)


def download(client: SafeHttpClient, url: str, dest: Path, **overrides: float) -> DownloadResult:
    options: dict[str, float] = {"max_bytes": 10_000, "timeout_s": 5.0, "max_redirects": 3}
    options.update(overrides)
    return client.download(
        url,
        dest,
        max_bytes=int(options["max_bytes"]),
        timeout_s=options["timeout_s"],
        max_redirects=int(options["max_redirects"]),
    )


def assert_no_files(folder: Path) -> None:
    assert list(folder.iterdir()) == []


# --- downloads that work ---------------------------------------------------------------


def test_download_ok(servers: Servers, tmp_path: Path) -> None:
    client = SafeHttpClient(servers.policy)
    dest = tmp_path / "in" / "a.png"

    result = download(client, servers.url("/ok.png?x=1"), dest)

    assert dest.read_bytes() == PNG_1PX
    assert result.size == len(PNG_1PX)
    assert result.declared_content_type == "image/png"
    assert result.final_url == servers.url("/ok.png?x=1")
    assert result.remote_address == MAIN_IP
    assert [p.name for p in dest.parent.iterdir()] == ["a.png"]
    hit = servers.main.recorder.hits[0]
    assert hit.headers["accept-encoding"] == "identity"
    assert hit.headers["user-agent"].startswith("comfyui-saas")


def test_host_name_is_resolved_once_and_kept_in_the_host_header(
    servers: Servers, tmp_path: Path
) -> None:
    # Given a name whose second lookup would point at the (forbidden) loopback decoy
    dns = FakeDNS({"media.test": [[MAIN_IP], ["127.0.0.1"]]})
    client = SafeHttpClient(servers.policy, resolver=dns)

    # When it is downloaded
    result = download(client, servers.url("/echo-host", "media.test"), tmp_path / "h")

    # Then one lookup was made, the checked address served it, with the original Host
    assert dns.calls == ["media.test"]
    assert (tmp_path / "h").read_bytes() == f"media.test:{servers.main.port}".encode()
    assert result.remote_address == MAIN_IP
    assert servers.main.recorder.paths() == ["/echo-host"]
    assert servers.decoy.recorder.hits == []


def test_relative_redirect_is_followed(servers: Servers, tmp_path: Path) -> None:
    client = SafeHttpClient(servers.policy)
    result = download(client, servers.url("/redirect?to=/ok.png"), tmp_path / "r.png")
    assert result.final_url == servers.url("/ok.png")
    assert (tmp_path / "r.png").read_bytes() == PNG_1PX


def test_body_of_exactly_max_bytes_is_accepted(servers: Servers, tmp_path: Path) -> None:
    client = SafeHttpClient(servers.policy)
    result = download(client, servers.url("/sized?n=5000"), tmp_path / "f", max_bytes=5000)
    assert result.size == 5000


# --- address checks and DNS rebinding --------------------------------------------------


def test_rebinding_between_hops_is_caught(servers: Servers, tmp_path: Path) -> None:
    # Given a name that answers the allowed address first and loopback afterwards
    dns = FakeDNS({"rebind.test": [[MAIN_IP], ["127.0.0.1"]]})
    client = SafeHttpClient(servers.policy, resolver=dns)
    again = quote(servers.url("/ok.png", "rebind.test"), safe="")

    # When the first hop redirects back to the same name
    with pytest.raises(UrlRefused, match=r"resolves to 127\.0\.0\.1, a loopback address"):
        download(client, servers.url(f"/redirect?to={again}", "rebind.test"), tmp_path / "x")

    # Then each hop was resolved exactly once and the decoy saw nothing
    assert dns.calls == ["rebind.test", "rebind.test"]
    assert servers.main.recorder.paths() == [f"/redirect?to={again}"]
    assert servers.decoy.recorder.hits == []
    assert_no_files(tmp_path)


def test_any_forbidden_answer_refuses_the_host(servers: Servers, tmp_path: Path) -> None:
    dns = FakeDNS({"mixed.test": [[MAIN_IP, "10.0.0.1"]]})
    client = SafeHttpClient(servers.policy, resolver=dns)
    with pytest.raises(UrlRefused, match=r"resolves to 10\.0\.0\.1, a private address"):
        download(client, servers.url("/ok.png", "mixed.test"), tmp_path / "x")
    assert servers.main.recorder.hits == []


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("192.168.1.10", "private address"),
        ("169.254.169.254", "cloud metadata"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("fe80::1%eth0", "link-local"),
    ],
)
def test_name_resolving_to_forbidden_address_is_refused(
    servers: Servers, tmp_path: Path, answer: str, reason: str
) -> None:
    client = SafeHttpClient(servers.policy, resolver=FakeDNS({"inside.test": [[answer]]}))
    with pytest.raises(UrlRefused, match=reason):
        download(client, servers.url("/ok.png", "inside.test"), tmp_path / "x")


def test_redirect_to_loopback_is_refused(servers: Servers, tmp_path: Path) -> None:
    client = SafeHttpClient(servers.policy)
    to = quote(f"http://127.0.0.1:{servers.main.port}/ok.png", safe="")
    with pytest.raises(UrlRefused, match="loopback"):
        download(client, servers.url(f"/redirect?to={to}"), tmp_path / "x")
    assert servers.decoy.recorder.hits == []
    assert_no_files(tmp_path)


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://127.0.0.2:70/_x", "scheme 'gopher'"),
        ("http://169.254.169.254/latest/meta-data/", "port 80 is not allowed"),
        ("http://[::ffff:7f00:1]:{port}/", "IPv4-mapped"),
        ("http://0x7f000001:{port}/", "non-canonical"),
        ("http://user@127.0.0.2:{port}/ok.png", "credentials"),
    ],
)
def test_redirect_to_forbidden_target_is_refused(
    servers: Servers, tmp_path: Path, location: str, reason: str
) -> None:
    client = SafeHttpClient(servers.policy)
    to = quote(location.format(port=servers.main.port), safe="")
    with pytest.raises(UrlRefused, match=reason):
        download(client, servers.url(f"/redirect?to={to}&status=307"), tmp_path / "x")
    assert servers.decoy.recorder.hits == []


def test_redirect_loop_is_capped(servers: Servers, tmp_path: Path) -> None:
    client = SafeHttpClient(servers.policy)
    with pytest.raises(FetchFailed, match=r"too many redirects \(more than 3\)"):
        download(client, servers.url("/loop"), tmp_path / "x", max_redirects=3)
    assert servers.main.recorder.paths() == ["/loop"] * 4


def test_no_redirects_allowed(servers: Servers, tmp_path: Path) -> None:
    client = SafeHttpClient(servers.policy)
    with pytest.raises(FetchFailed, match="too many redirects"):
        download(client, servers.url("/redirect?to=/ok.png"), tmp_path / "x", max_redirects=0)


def test_pinned_backend_refuses_any_other_origin() -> None:
    backend = PinnedBackend("a.test", 80, [parse_ip(MAIN_IP)], time.monotonic() + 5)
    with pytest.raises(httpcore.ConnectError, match="unchecked origin"):
        backend.connect_tcp("b.test", 80)
    with pytest.raises(httpcore.ConnectError, match="unchecked origin"):
        backend.connect_tcp("a.test", 8080)
    assert backend.connected == []


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/missing", "answered HTTP 404"),
        ("/no-location", "HTTP 302 without a Location"),
        ("/gzip", "content-encoding 'gzip'"),
        ("/short", "failed"),
    ],
)
def test_bad_responses_fail_without_leaving_files(
    servers: Servers, tmp_path: Path, path: str, reason: str
) -> None:
    client = SafeHttpClient(servers.policy)
    with pytest.raises(FetchFailed, match=reason):
        download(client, servers.url(path), tmp_path / "x")
    assert_no_files(tmp_path)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/sized?n=5000", "declares 5000 bytes, over the limit of 1000"),
        ("/unsized?n=50000", "over the limit of 1000 bytes"),
        ("/chunked?chunks=20", "over the limit of 1000 bytes"),
    ],
)
def test_byte_cap(servers: Servers, tmp_path: Path, path: str, reason: str) -> None:
    client = SafeHttpClient(servers.policy)
    with pytest.raises(FetchFailed, match=reason):
        download(client, servers.url(path), tmp_path / "x", max_bytes=1000)
    assert_no_files(tmp_path)


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_slow_drip_is_killed_by_the_wall_clock_deadline(
    servers: Servers, tmp_path: Path, path: str
) -> None:
    # The server sends a byte every 0.1 s: no single read ever times out.
    client = SafeHttpClient(servers.policy)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"did not finish within 1 s"):
        download(client, servers.url(path), tmp_path / "x", timeout_s=1.0)
    assert 0.9 <= time.monotonic() - started < 2.5  # not the 5 s the server would take
    assert_no_files(tmp_path)


def test_slow_dns_counts_against_the_deadline(servers: Servers, tmp_path: Path) -> None:
    dns = FakeDNS({"slow.test": [[MAIN_IP]]}, delay_s=2.0)
    client = SafeHttpClient(servers.policy, resolver=dns)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="before the deadline"):
        download(client, servers.url("/ok.png", "slow.test"), tmp_path / "x", timeout_s=0.5)
    assert time.monotonic() - started < 1.5


def test_unknown_name_fails(servers: Servers, tmp_path: Path) -> None:
    client = SafeHttpClient(servers.policy, resolver=FakeDNS({}))
    with pytest.raises(FetchFailed, match=r"could not resolve 'nowhere\.test'"):
        download(client, servers.url("/ok.png", "nowhere.test"), tmp_path / "x")


def test_connection_refused_fails(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind((MAIN_IP, 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    policy = UrlPolicy(True, frozenset({port}), parse_cidrs([f"{MAIN_IP}/32"]))
    # Nobody listening may be a restart: retryable, so the fetch stage tries again later.
    with pytest.raises(FetchUnavailable, match="could not connect") as info:
        download(SafeHttpClient(policy), f"http://{MAIN_IP}:{port}/", tmp_path / "x")
    assert info.value.retryable


def test_default_policy_refuses_the_test_server(servers: Servers, tmp_path: Path) -> None:
    with pytest.raises(UrlRefused, match="plain http"):
        download(SafeHttpClient(UrlPolicy()), servers.url("/ok.png"), tmp_path / "x")
    assert servers.main.recorder.hits == []


# --- webhooks ---------------------------------------------------------------------------


def test_post_returns_a_redirect_without_following_it(servers: Servers) -> None:
    client = SafeHttpClient(servers.policy)
    result = client.post(
        servers.url("/hook/status/302"),
        b'{"id":"j1"}',
        {"Content-Type": "application/json", "webhook-id": "msg_1"},
        timeout_s=5,
    )
    assert result.status_code == 302
    assert result.headers["location"] == "/hook/followed"
    assert servers.main.recorder.paths() == ["/hook/status/302"]
    hit = servers.main.recorder.hits[0]
    assert hit.method == "POST"
    assert hit.body == b'{"id":"j1"}'
    assert hit.headers["webhook-id"] == "msg_1"


@pytest.mark.parametrize(
    ("status", "retry_after"), [(204, None), (410, None), (429, 7.0), (500, None)]
)
def test_post_status_and_retry_after(
    servers: Servers, status: int, retry_after: float | None
) -> None:
    result = SafeHttpClient(servers.policy).post(
        servers.url(f"/hook/status/{status}"), b"{}", {}, timeout_s=5
    )
    assert result.status_code == status
    assert result.retry_after_s == retry_after


def test_post_retry_after_as_http_date(servers: Servers) -> None:
    result = SafeHttpClient(servers.policy).post(
        servers.url("/hook/status/503"), b"{}", {}, timeout_s=5
    )
    assert result.status_code == 503
    assert result.retry_after_s is not None
    assert 100 <= result.retry_after_s <= 121


def test_post_reads_a_bounded_response(servers: Servers) -> None:
    result = SafeHttpClient(servers.policy).post(servers.url("/hook/big"), b"", {}, timeout_s=5)
    assert result.status_code == 200
    assert len(result.body) == 4096


def test_post_refusals_and_failures(servers: Servers) -> None:
    dns = FakeDNS({"hook.test": [["10.1.2.3"]]})
    client = SafeHttpClient(servers.policy, resolver=dns)
    with pytest.raises(UrlRefused, match="private address"):
        client.post(servers.url("/hook/x", "hook.test"), b"", {}, timeout_s=5)
    with pytest.raises(UrlRefused, match="scheme 'ftp'"):
        client.post("ftp://example.com/", b"", {}, timeout_s=5)
    with pytest.raises(DeliveryFailed, match="could not resolve"):
        client.post(servers.url("/hook/x", "nowhere.test"), b"", {}, timeout_s=5)
    assert servers.main.recorder.hits == []


def test_post_times_out_as_delivery_failed(servers: Servers) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match=r"did not answer within 0\.5 s") as caught:
        SafeHttpClient(servers.policy).post(servers.url("/hook/slow"), b"", {}, timeout_s=0.5)
    assert caught.value.retryable
    assert time.monotonic() - started < 1.5


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after(" 30 ") == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:00 GMT", now=now) == 60.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None


# --- TLS: the pinned connection still verifies the host name ----------------------------


@dataclass
class TlsSetup:
    server: LocalServer
    client_context: ssl.SSLContext
    policy: UrlPolicy


@pytest.fixture(scope="module")
def tls_setup() -> Iterator[TlsSetup]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("safe.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = LocalServer((MAIN_IP, 0), tls=server_context)
    stop = start(server)
    policy = UrlPolicy(False, frozenset({server.port}), parse_cidrs([f"{MAIN_IP}/32"]))
    yield TlsSetup(server, client_context, policy)
    stop()


def test_tls_uses_the_host_name_for_sni_and_verification(
    tls_setup: TlsSetup, tmp_path: Path
) -> None:
    # Given a name resolving to the server, whose certificate names only "safe.test"
    dns = FakeDNS({"safe.test": [[MAIN_IP]], "other.test": [[MAIN_IP]]})
    client = SafeHttpClient(tls_setup.policy, resolver=dns, ssl_context=tls_setup.client_context)
    port = tls_setup.server.port

    # When fetched by that name, the connection goes to the pinned IP and verifies
    download(client, f"https://safe.test:{port}/echo-host", tmp_path / "ok")
    assert (tmp_path / "ok").read_bytes() == f"safe.test:{port}".encode()
    assert tls_setup.server.recorder.sni[-1] == "safe.test"

    # Then a name the certificate does not cover fails verification
    with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED"):
        download(client, f"https://other.test:{port}/echo-host", tmp_path / "bad")
    # And by bare IP the certificate does not match either
    with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED"):
        download(client, f"https://{MAIN_IP}:{port}/echo-host", tmp_path / "ip")
    assert not (tmp_path / "bad").exists()


def test_tls_default_context_does_not_trust_unknown_cas(
    tls_setup: TlsSetup, tmp_path: Path
) -> None:
    client = SafeHttpClient(tls_setup.policy, resolver=FakeDNS({"safe.test": [[MAIN_IP]]}))
    with pytest.raises(FetchFailed, match="CERTIFICATE_VERIFY_FAILED"):
        download(client, f"https://safe.test:{tls_setup.server.port}/ok.png", tmp_path / "x")


# --- IPv6 literals ----------------------------------------------------------------------


class _LocalServer6(LocalServer):
    address_family = socket.AF_INET6


def test_ipv6_literal_connects_to_the_checked_address(tmp_path: Path) -> None:
    try:
        server = _LocalServer6(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    stop = start(server)
    try:
        policy = UrlPolicy(True, frozenset({server.port}), parse_cidrs(["::1/128"]))
        result = download(
            SafeHttpClient(policy), f"http://[0:0::1]:{server.port}/echo-host", tmp_path / "x"
        )
        assert result.final_url == f"http://[::1]:{server.port}/echo-host"
        assert result.remote_address == "::1"
        assert (tmp_path / "x").read_bytes() == f"[::1]:{server.port}".encode()
        # Without the allow list the same URL is refused before any connection.
        with pytest.raises(UrlRefused, match="loopback"):
            download(SafeHttpClient(UrlPolicy(True, frozenset({server.port}))),
                     result.final_url, tmp_path / "y")  # fmt: skip
        assert len(server.recorder.hits) == 1
    finally:
        stop()


@pytest.mark.parametrize("code", [429, 500, 502, 503, 504])
def test_server_trouble_is_retryable(servers: Servers, tmp_path: Path, code: int) -> None:
    # "Not now" answers fail the attempt but not the job: the fetch stage retries later.
    client = SafeHttpClient(servers.policy)
    with pytest.raises(FetchUnavailable, match=f"answered HTTP {code}") as info:
        download(client, servers.url(f"/status?code={code}"), tmp_path / "x")
    assert info.value.retryable
    assert_no_files(tmp_path)


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410])
def test_client_errors_are_permanent(servers: Servers, tmp_path: Path, code: int) -> None:
    client = SafeHttpClient(servers.policy)
    with pytest.raises(FetchFailed, match=f"answered HTTP {code}") as info:
        download(client, servers.url(f"/status?code={code}"), tmp_path / "x")
    assert not info.value.retryable


def test_retry_after_accepts_only_ascii_delta_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("\u00b2") is None  # a superscript digit: isdigit() would say yes
    assert parse_retry_after("1" * 11) is None


def test_a_cancel_stops_a_slow_download_between_chunks(servers: Servers, tmp_path: Path) -> None:
    # The server drips for 100 s; the job is cancelled after the first few bytes.
    client = SafeHttpClient(servers.policy)
    asked: list[float] = []

    def cancelled() -> bool:
        asked.append(time.monotonic())
        return len(asked) > 3

    started = time.monotonic()
    with pytest.raises(StageCancelled):
        client.download(
            servers.url("/drip"),
            tmp_path / "x",
            max_bytes=10_000,
            timeout_s=30.0,
            max_redirects=0,
            should_cancel=cancelled,
        )
    assert time.monotonic() - started < 1.0  # the acceptance bound: stopped within 1 s
    assert_no_files(tmp_path)
