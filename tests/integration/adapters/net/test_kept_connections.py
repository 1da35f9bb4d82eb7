"""Webhook posts reuse one connection per destination, and never at the policy's expense."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.adapters.net.policy import UrlPolicy, parse_cidrs
from app.adapters.net.safe_client import SafeHttpClient
from app.core.errors import UrlRefused


class _KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps the connection open between requests
    server: Recorded

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.peers.append(self.client_address[1])
            self.server.cookies.append(self.headers.get("Cookie"))
        self.send_response(200)
        self.send_header("Set-Cookie", "session=receiver-state")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


class Recorded(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.peers: list[int] = []
        self.cookies: list[str | None] = []
        self.lock = threading.Lock()
        super().__init__(address, _KeepAlive)


@pytest.fixture
def receiver() -> Iterator[Recorded]:
    server = Recorded(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def policy_for(server: Recorded) -> UrlPolicy:
    return UrlPolicy(
        allow_http=True,
        allowed_ports=frozenset({int(server.server_address[1])}),
        allow_cidrs=parse_cidrs(["127.0.0.1/32"]),
    )


def test_posts_to_one_receiver_reuse_one_connection_without_its_cookies(
    receiver: Recorded,
) -> None:
    client = SafeHttpClient(policy_for(receiver))
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    for _ in range(3):
        assert client.post(url, b"{}", {}, timeout_s=5).status_code == 200
    assert len(set(receiver.peers)) == 1, receiver.peers  # one TCP connection for all three
    assert receiver.cookies == [None, None, None]  # the Set-Cookie never comes back


def test_each_post_is_still_checked_against_the_policy_and_resolved(receiver: Recorded) -> None:
    port = int(receiver.server_address[1])
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    lookups: list[str] = []

    def resolver(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    client = SafeHttpClient(policy_for(receiver), resolver=resolver)
    url = f"http://hook.test:{port}/hook"
    assert client.post(url, b"{}", {}, timeout_s=5).status_code == 200
    # DNS now points the same name at a private address: refused, connection kept or not.
    with pytest.raises(UrlRefused):
        client.post(url, b"{}", {}, timeout_s=5)
    assert lookups == ["hook.test", "hook.test"]
    assert len(receiver.peers) == 1


def test_a_busy_destination_gets_a_connection_of_its_own(receiver: Recorded) -> None:
    client = SafeHttpClient(policy_for(receiver))
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

    def post() -> int:
        return client.post(url, b"{}", {}, timeout_s=5).status_code

    assert post() == 200
    target_lock = next(iter(client._kept._kept.values())).lock
    with target_lock:  # another delivery is using the kept connection right now
        assert post() == 200
    assert post() == 200
    first, second, third = receiver.peers
    assert first == third != second
