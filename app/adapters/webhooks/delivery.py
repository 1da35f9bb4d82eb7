"""One webhook delivery attempt: sign, post through the caller's client, record, decide.

The HTTP client is passed in (`post`): in production the SSRF-safe client, which
refuses private addresses and never follows redirects; in tests a plain one. Whatever
it raises as an `app.core.errors.PipelineError` becomes a failed attempt, never an exception.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from app.adapters.webhooks.signing import decide, signed_headers
from app.core.errors import PipelineError, UrlRefused
from app.core.logs import get_logger
from app.core.models import DeliveryAttempt

#: Longest error text kept in the delivery log.
MAX_ERROR_CHARS = 300


class ReceiverAnswer(Protocol):
    """What a post function returns: the status and a parsed `Retry-After`."""

    @property
    def status_code(self) -> int: ...

    @property
    def retry_after_s(self) -> float | None: ...


class PostFn(Protocol):
    """Send `body` to `url` with `headers` once; no redirects followed.

    Raises an `app.core.errors.PipelineError` when no HTTP answer came back (refused URL,
    connection error, timeout).
    """

    def __call__(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> ReceiverAnswer: ...


@dataclass(frozen=True, slots=True)
class PostResponse:
    """A plain `ReceiverAnswer` for post functions to return."""

    status_code: int
    retry_after_s: float | None = None


def deliver_once(
    post: PostFn,
    url: str,
    secret: str | Sequence[str],
    msg_id: str,
    body: bytes,
    *,
    attempt: int,
    schedule_s: Sequence[int],
    timeout_s: float,
    clock: Callable[[], float] = time.time,
    timer: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] = random.random,
) -> DeliveryAttempt:
    """Make delivery attempt number `attempt` (1 for the first) and decide what follows."""
    started_at = clock()
    headers = signed_headers(secret, msg_id, body, datetime.fromtimestamp(started_at, UTC))
    status_code: int | None = None
    retry_after_s: float | None = None
    error: str | None = None
    refused = False
    began = timer()
    try:
        result = post(url, body, headers, timeout_s=timeout_s)
    except PipelineError as exc:
        refused = isinstance(exc, UrlRefused)
        error = f"{exc.code}: {exc.message}"[:MAX_ERROR_CHARS]
    else:
        status_code = result.status_code
        retry_after_s = result.retry_after_s
    duration_s = max(0.0, timer() - began)
    decision = decide(
        attempt, status_code, retry_after_s, schedule_s, clock(), refused=refused, rand=rand
    )
    get_logger(component="webhooks").info(
        "webhook_attempt",
        msg_id=msg_id,
        attempt=attempt,
        status_code=status_code,
        outcome=decision.outcome,
        duration_s=round(duration_s, 3),
    )
    return DeliveryAttempt(
        attempt=attempt,
        at=started_at,
        status_code=status_code,
        error=error,
        duration_s=duration_s,
        outcome=decision.outcome,
        next_attempt_at=decision.next_attempt_at,
        reason=decision.reason,
    )
