"""Webhook deliveries to a real HTTP receiver on loopback, verified with standardwebhooks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks import Webhook

from app.adapters.net.safe_client import parse_retry_after
from app.adapters.webhooks.delivery import PostFn, PostResponse, deliver_once
from app.adapters.webhooks.signing import event_payload, new_message_id
from app.core.errors import FetchFailed, UrlRefused
from app.core.models import DeliveryAttempt
from app.core.webhook_secret import new_webhook_secret

SCHEDULE = [5, 300, 1800]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint that answers from a script and records what it got."""

    url: str
    #: (status, headers) answers, used in order; the last one repeats.
    script: list[tuple[int, dict[str, str]]] = field(default_factory=lambda: [(200, {})])
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, request: Received) -> tuple[int, dict[str, str]]:
        with self.lock:
            self.received.append(request)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            status, headers = state[0].answer(request)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    state.append(Receiver(f"http://127.0.0.1:{server.server_port}/hooks/job"))
    # A short poll interval keeps shutdown() quick at teardown.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def post() -> Iterator[PostFn]:
    """A plain httpx post function (production uses the SSRF-safe client)."""
    client = httpx.Client(follow_redirects=False, trust_env=False)

    def send(
        url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> PostResponse:
        try:
            response = client.post(url, content=body, headers=dict(headers), timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"webhook post failed: {type(exc).__name__}") from exc
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return PostResponse(response.status_code, retry_after)

    yield send
    client.close()


class Clock:
    """Real time plus an offset, so attempts land in different seconds without sleeping."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s


def _deliver(
    post: PostFn,
    url: str,
    secret: str,
    msg_id: str,
    body: bytes,
    attempt: int,
    clock: Callable[[], float] | None = None,
) -> DeliveryAttempt:
    return deliver_once(
        post,
        url,
        secret,
        msg_id,
        body,
        attempt=attempt,
        schedule_s=SCHEDULE,
        timeout_s=5.0,
        clock=clock or time.time,
        rand=lambda: 0.5,
    )


def _body(job_id: str = "job-1") -> bytes:
    return event_payload("job.completed", job_id, "completed", timestamp=datetime.now(UTC))


def test_delivery_verifies_at_the_receiver(receiver: Receiver, post: PostFn) -> None:
    secret = new_webhook_secret()
    body = _body()

    attempt = _deliver(post, receiver.url, secret, new_message_id(), body, attempt=1)

    assert attempt.outcome == "delivered"
    assert attempt.status_code == 200
    assert attempt.error is None and attempt.duration_s >= 0
    [got] = receiver.received
    assert got.path == "/hooks/job"
    assert got.body == body  # exactly the signed bytes
    assert got.headers["content-type"] == "application/json"
    payload = Webhook(secret).verify(got.body, got.headers)
    assert payload["type"] == "job.completed"
    assert payload["data"] == {"job_id": "job-1", "status": "completed"}


def test_retry_keeps_the_id_and_changes_the_timestamp(receiver: Receiver, post: PostFn) -> None:
    # Given a receiver that fails once, then accepts
    receiver.script = [(500, {}), (200, {})]
    secret, msg_id, body, clock = new_webhook_secret(), new_message_id(), _body(), Clock()

    # When the first attempt fails and the second is made when it was scheduled
    first = _deliver(post, receiver.url, secret, msg_id, body, attempt=1, clock=clock)
    assert first.outcome == "retry"
    assert first.next_attempt_at is not None
    clock.offset_s = first.next_attempt_at - time.time()
    second = _deliver(post, receiver.url, secret, msg_id, body, attempt=2, clock=clock)

    # Then it is delivered; both requests carry the same id, different timestamps,
    # and each verifies on its own
    assert second.outcome == "delivered"
    assert first.next_attempt_at == pytest.approx(first.at + 5, abs=0.5)
    one, two = receiver.received
    assert one.headers["webhook-id"] == two.headers["webhook-id"] == msg_id
    assert int(two.headers["webhook-timestamp"]) - int(one.headers["webhook-timestamp"]) in (
        4,
        5,
        6,
    )
    for got in (one, two):
        Webhook(secret).verify(got.body, got.headers)
    assert one.headers["webhook-signature"] != two.headers["webhook-signature"]


def test_gone_endpoint_is_dead(receiver: Receiver, post: PostFn) -> None:
    receiver.script = [(410, {})]

    attempt = _deliver(post, receiver.url, new_webhook_secret(), "msg_1", _body(), attempt=1)

    assert (attempt.outcome, attempt.status_code, attempt.next_attempt_at) == ("dead", 410, None)


def test_429_retry_after_is_honoured(receiver: Receiver, post: PostFn) -> None:
    receiver.script = [(429, {"Retry-After": "120"})]

    attempt = _deliver(post, receiver.url, new_webhook_secret(), "msg_1", _body(), attempt=1)

    assert attempt.outcome == "retry"
    assert attempt.next_attempt_at is not None
    assert attempt.next_attempt_at - attempt.at == pytest.approx(120, abs=0.5)
    assert "retry-after" in attempt.reason


def test_exhausted_schedule_is_dead(receiver: Receiver, post: PostFn) -> None:
    receiver.script = [(503, {})]
    secret, msg_id, body = new_webhook_secret(), new_message_id(), _body()

    outcomes = [
        _deliver(post, receiver.url, secret, msg_id, body, attempt=n).outcome
        for n in range(1, len(SCHEDULE) + 2)
    ]

    assert outcomes == ["retry", "retry", "retry", "dead"]
    assert len(receiver.received) == len(SCHEDULE) + 1


def test_redirect_is_not_followed(receiver: Receiver, post: PostFn) -> None:
    receiver.script = [(302, {"Location": "/elsewhere"}), (200, {})]

    attempt = _deliver(post, receiver.url, new_webhook_secret(), "msg_1", _body(), attempt=1)

    assert attempt.outcome == "retry"
    assert attempt.status_code == 302
    assert [r.path for r in receiver.received] == ["/hooks/job"]


def test_network_error_is_a_failed_attempt(post):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/nothing"

    attempt = _deliver(post, url, new_webhook_secret(), "msg_1", _body(), attempt=1)

    assert attempt.outcome == "retry"
    assert attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("fetch_failed: ")


def test_refused_url_is_dead_without_a_request():
    def refusing_post(url, body, headers, *, timeout_s):
        raise UrlRefused("webhook host resolves to a private address")

    attempt = _deliver(refusing_post, "https://internal.test/", new_webhook_secret(), "m", b"{}", 1)

    assert attempt.outcome == "dead"
    assert attempt.error == "url_refused: webhook host resolves to a private address"


def test_attempt_record_round_trips_as_json(receiver: Receiver, post: PostFn) -> None:
    attempt = _deliver(post, receiver.url, new_webhook_secret(), "msg_1", _body(), attempt=1)

    restored = DeliveryAttempt.model_validate_json(attempt.model_dump_json())

    assert restored == attempt
    assert receiver.url not in attempt.model_dump_json()
