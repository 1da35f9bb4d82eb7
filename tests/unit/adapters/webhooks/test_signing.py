"""Webhook signing, payloads and the pure retry policy."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.adapters.webhooks.signing import (
    RETRY_AFTER_CAP_S,
    EventType,
    decide,
    event_payload,
    event_type_for,
    new_message_id,
    signed_headers,
)
from app.core.webhook_secret import new_webhook_secret

SCHEDULE = [5, 300, 1800]
SIGNATURE = re.compile(r"v1,[A-Za-z0-9+/]{43}=")


def _mid() -> float:
    """A random source at the middle of its range: no jitter."""
    return 0.5


def test_new_secret_is_whsec_base64_of_32_bytes():
    secret = new_webhook_secret()

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert secret != new_webhook_secret()
    Webhook(secret)  # the reference library accepts it


def test_event_payload_is_thin_json():
    when = datetime(2026, 11, 23, 12, 0, 1, 500000, tzinfo=timezone(timedelta(hours=2)))

    body = event_payload("job.failed", "job-1", "failed", timestamp=when, extra={"code": "x"})

    assert json.loads(body) == {
        "type": "job.failed",
        "timestamp": "2026-11-23T10:00:01.500000Z",
        "data": {"job_id": "job-1", "status": "failed", "code": "x"},
    }
    assert body.isascii()


def test_event_payload_refuses_unknown_types_and_overrides():
    now = datetime.now(UTC)
    with pytest.raises(ValueError):
        event_payload("job.exploded", "j", "failed", timestamp=now)
    with pytest.raises(ValueError):
        event_payload("job.completed", "j", "completed", timestamp=now, extra={"status": "x"})
    with pytest.raises(ValueError):
        event_payload("job.completed", "j", "completed", timestamp=datetime(2026, 1, 1))


def test_event_type_for_terminal_statuses():
    assert event_type_for("completed") is EventType.JOB_COMPLETED
    assert event_type_for("failed") is EventType.JOB_FAILED
    assert event_type_for("cancelled") is EventType.JOB_CANCELLED
    with pytest.raises(ValueError):
        event_type_for("running")


def test_signed_headers_verify_with_the_reference_library():
    secret = new_webhook_secret()
    body = event_payload("job.completed", "job-1", "completed", timestamp=datetime.now(UTC))
    msg_id = new_message_id()

    headers = signed_headers(secret, msg_id, body, datetime.now(UTC))

    assert headers["webhook-id"] == msg_id
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("comfyui-saas")
    # The library raises a bare ValueError on malformed entries such as "v1", so check
    # that ours are well-formed before trusting its verdict.
    assert SIGNATURE.fullmatch(headers["webhook-signature"])
    assert Webhook(secret).verify(body, headers)["data"]["job_id"] == "job-1"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"job-1", b"job-2"), headers)


def test_timestamp_in_another_zone_is_converted_not_relabelled():
    secret = new_webhook_secret()
    body = b"{}"
    now_utc = datetime.now(UTC)
    elsewhere = now_utc.astimezone(timezone(timedelta(hours=-7)))

    headers = signed_headers(secret, "msg_1", body, elsewhere)

    assert headers["webhook-timestamp"] == str(int(now_utc.timestamp()))
    Webhook(secret).verify(body, headers)


def test_rotation_signs_with_every_secret():
    old, new = new_webhook_secret(), new_webhook_secret()
    headers = signed_headers([old, new], "msg_1", b"{}", datetime.now(UTC))

    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(SIGNATURE.fullmatch(e) for e in entries)
    Webhook(old).verify(b"{}", headers)
    Webhook(new).verify(b"{}", headers)


@pytest.mark.parametrize("msg_id", ["", "has space", "a\r\nb", "x" * 129])
def test_bad_message_ids_are_refused(msg_id: str) -> None:
    with pytest.raises(ValueError):
        signed_headers(new_webhook_secret(), msg_id, b"{}", datetime.now(UTC))


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_any_2xx_is_delivered(status: int) -> None:
    decision = decide(1, status, None, SCHEDULE, now=1000.0, rand=_mid)
    assert (decision.outcome, decision.next_attempt_at) == ("delivered", None)


@pytest.mark.parametrize("status", [None, 301, 302, 400, 401, 404, 500, 502])
def test_failures_retry_on_schedule(status: int | None) -> None:
    decision = decide(2, status, None, SCHEDULE, now=1000.0, rand=_mid)

    assert decision.outcome == "retry"
    assert decision.next_attempt_at == 1300.0


def test_redirects_are_failures_with_a_reason():
    decision = decide(1, 302, None, SCHEDULE, now=0.0, rand=_mid)
    assert decision.outcome == "retry"
    assert "redirect" in decision.reason


def test_jitter_stays_within_ten_percent():
    low = decide(1, 500, None, [100], now=0.0, rand=lambda: 0.0)
    high = decide(1, 500, None, [100], now=0.0, rand=lambda: 1.0)
    assert low.next_attempt_at == pytest.approx(90.0)
    assert high.next_attempt_at == pytest.approx(110.0)


def test_410_gone_is_dead_at_once():
    decision = decide(1, 410, None, SCHEDULE, now=0.0, rand=_mid)
    assert decision.outcome == "dead"
    assert "410" in decision.reason


def test_refused_url_is_dead_at_once():
    assert decide(1, None, None, SCHEDULE, now=0.0, refused=True).outcome == "dead"


def test_schedule_exhaustion_is_dead():
    assert decide(3, 500, None, SCHEDULE, now=0.0, rand=_mid).outcome == "retry"
    decision = decide(4, 500, None, SCHEDULE, now=0.0, rand=_mid)
    assert decision.outcome == "dead"
    assert "exhausted" in decision.reason
    assert decide(1, None, None, [], now=0.0).outcome == "dead"


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_but_not_below_the_schedule(status: int) -> None:
    longer = decide(1, status, 120.0, SCHEDULE, now=1000.0, rand=_mid)
    shorter = decide(1, status, 1.0, SCHEDULE, now=1000.0, rand=_mid)
    capped = decide(1, status, 10 * 86_400.0, SCHEDULE, now=1000.0, rand=_mid)

    assert longer.next_attempt_at == 1120.0
    assert shorter.next_attempt_at == 1005.0
    assert capped.next_attempt_at == 1000.0 + RETRY_AFTER_CAP_S


def test_retry_after_is_ignored_for_other_statuses():
    assert decide(1, 500, 120.0, SCHEDULE, now=0.0, rand=_mid).next_attempt_at == 5.0


def test_attempts_count_from_one():
    with pytest.raises(ValueError):
        decide(0, 500, None, SCHEDULE, now=0.0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Mon, 23 Nov 2026 12:00:30 GMT", 30.0),
        ("Mon, 23 Nov 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("²", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    # Webhook posts parse Retry-After with the SSRF-safe client's parser.
    from app.adapters.net.safe_client import parse_retry_after

    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == expected
