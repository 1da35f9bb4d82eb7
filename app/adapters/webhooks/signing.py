"""Standard Webhooks: secrets, event payloads, signed headers, and the retry policy.

Everything here is pure (the clock and the randomness are arguments), so the notify
stage and its tests decide the same way. Sending lives in `app.adapters.webhooks.delivery`.

Signing follows Standard Webhooks v1: HMAC-SHA256 over `{id}.{timestamp}.{body}`, sent
as `webhook-signature: v1,<base64>`. The `webhook-id` is the receiver's idempotency key:
it stays the same on every retry of one event while `webhook-timestamp` changes.
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from standardwebhooks import Webhook

from app.core.errors import InvalidRequest
from app.core.models import Outcome

USER_AGENT = "comfyui-saas-webhooks/1"
#: The longest wait a `Retry-After` may impose; longer values are cut to this.
RETRY_AFTER_CAP_S = 86_400.0
#: Each scheduled delay is spread by up to this fraction either way.
JITTER_FRACTION = 0.10
_MSG_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class EventType(StrEnum):
    """The events a job sends to its webhook."""

    JOB_COMPLETED = "job.completed"  #: outputs are stored; fetch the job for links
    JOB_FAILED = "job.failed"  #: the job stopped with an error
    JOB_CANCELLED = "job.cancelled"  #: the client cancelled the job
    JOB_STARTED = "job.started"  #: opt-in: a stage started (`data.stage`)
    JOB_PROGRESS = "job.progress"  #: opt-in, throttled: the render's progress


#: The events a job may opt in to (`webhook_events`); the terminal one is always sent.
OPT_IN_EVENTS = frozenset({EventType.JOB_STARTED.value, EventType.JOB_PROGRESS.value})
TERMINAL_EVENTS = frozenset(
    {EventType.JOB_COMPLETED.value, EventType.JOB_FAILED.value, EventType.JOB_CANCELLED.value}
)


def check_event_names(names: Sequence[str], *, has_webhook: bool) -> None:
    """Refuse unknown event names, and events without a webhook to send them to.

    The terminal events may be named too (they are sent anyway).
    """
    unknown = sorted({n for n in names if n not in OPT_IN_EVENTS | TERMINAL_EVENTS})
    if unknown:
        raise InvalidRequest(
            f"unknown webhook event {unknown[0]!r}: the events to opt in to are "
            f"{', '.join(sorted(OPT_IN_EVENTS))} (terminal events are always sent)"
        )
    if names and not has_webhook:
        raise InvalidRequest("webhook_events needs a webhook_url to send them to")


_EVENT_FOR_STATUS = {
    "completed": EventType.JOB_COMPLETED,
    "failed": EventType.JOB_FAILED,
    "cancelled": EventType.JOB_CANCELLED,
}


def event_type_for(status: str) -> EventType:
    """The event a terminal job status announces."""
    try:
        return _EVENT_FOR_STATUS[status]
    except KeyError:
        raise ValueError(f"no webhook event for status {status!r}") from None


def new_message_id() -> str:
    """A fresh `webhook-id`; make one per event and keep it across that event's retries."""
    return "msg_" + secrets.token_hex(16)


def event_payload(
    event_type: str,
    job_id: str,
    status: str,
    *,
    timestamp: datetime,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """A JSON event: `{"type", "timestamp", "data": {"job_id", "status", ...}}`.

    `extra` adds fields to `data` (a terminal event's outputs, a progress event's numbers)
    and may not replace `job_id` or `status`.
    """
    kind = EventType(event_type)
    data: dict[str, Any] = {"job_id": job_id, "status": status}
    for name, value in (extra or {}).items():
        if name in data:
            raise ValueError(f"extra may not override {name!r}")
        data[name] = value
    body = {"type": kind.value, "timestamp": _iso_utc(timestamp), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


def signed_headers(
    secret: str | Sequence[str], msg_id: str, body: bytes, now: datetime
) -> dict[str, str]:
    """The request headers of one delivery attempt, signed with every given secret.

    Several secrets give several `v1,` signatures, so receivers keep verifying while an
    endpoint's secret is rotated.
    """
    if not _MSG_ID.fullmatch(msg_id):
        raise ValueError("msg_id must be 1-128 characters of [A-Za-z0-9_.:-]")
    secrets_ = [secret] if isinstance(secret, str) else list(secret)
    if not secrets_:
        raise ValueError("at least one secret is needed")
    # The library overwrites the datetime's zone with UTC instead of converting it.
    when = _utc(now)
    text = body.decode("utf-8")
    signatures = " ".join(Webhook(s).sign(msg_id, when, text) for s in secrets_)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(when.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


@dataclass(frozen=True, slots=True)
class DeliveryDecision:
    """What to do after one delivery attempt."""

    outcome: Outcome
    #: Unix seconds of the next attempt; set only when `outcome` is "retry".
    next_attempt_at: float | None
    reason: str


def decide(
    attempt: int,
    status_code: int | None,
    retry_after_s: float | None,
    schedule_s: Sequence[int],
    now: float,
    *,
    refused: bool = False,
    rand: Callable[[], float] = random.random,
) -> DeliveryDecision:
    """Decide after attempt number `attempt` (1 for the first) got `status_code`.

    `status_code` None means no answer (network error, timeout). `schedule_s[i]` is the
    delay before retry i+1, so `len(schedule_s) + 1` attempts are made at most.
    `refused` means the URL policy refused the endpoint, which no retry can fix.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    if status_code is not None and 200 <= status_code < 300:
        return DeliveryDecision("delivered", None, f"http {status_code}")
    if refused:
        return DeliveryDecision("dead", None, "endpoint refused by the URL policy")
    if status_code == 410:
        return DeliveryDecision("dead", None, "http 410: endpoint gone")
    reason = "no response" if status_code is None else f"http {status_code}"
    if status_code is not None and 300 <= status_code < 400:
        reason += " (redirects are not followed)"
    if attempt > len(schedule_s):
        return DeliveryDecision("dead", None, f"{reason}; retries exhausted")
    jitter = 1.0 + JITTER_FRACTION * (2.0 * rand() - 1.0)
    delay_s = schedule_s[attempt - 1] * jitter
    if status_code in (429, 503) and retry_after_s is not None and retry_after_s > 0:
        delay_s = max(delay_s, min(retry_after_s, RETRY_AFTER_CAP_S))
        reason += f"; retry-after {retry_after_s:g}s"
    return DeliveryDecision("retry", now + delay_s, reason)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC)


def _iso_utc(moment: datetime) -> str:
    return _utc(moment).isoformat().replace("+00:00", "Z")
