"""Notify: deliver a job's terminal event to its webhook, signed per Standard Webhooks.

One delivery per job, with one `webhook-id` and one body for its whole life, except the
outputs' download URLs: each attempt signs them afresh (valid `presign_expiry_s` from
the attempt, `urls_expire_at`), so a retry hours later still carries working links. Each
attempt is re-signed with a fresh timestamp. A job that opted in to non-terminal events
(`app.engine.webhook_events`) gets its terminal event only once none of them is still
being posted, so a receiver never sees `job.progress` after `job.completed`.

A retry is `Later(at)`: the engine parks the message and the sweep puts it back on the
queue when due, never a sleeping worker. The delivery record (`deps.deliveries`) ends
`delivered` or `dead` (the dead-letter state); the engine then settles the job's pending
delivery.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from app.adapters.webhooks.delivery import deliver_once
from app.adapters.webhooks.signing import (
    OPT_IN_EVENTS,
    event_payload,
    event_type_for,
    new_message_id,
)
from app.core.errors import PipelineError
from app.core.logs import get_logger
from app.core.models import Job, Stage
from app.engine import metrics
from app.engine.deps import Deps
from app.engine.pipeline import Later
from app.engine.views import signed_urls
from app.store.deliveries import Delivery, DeliveryState


def first_delivery(deps: Deps, job: Job) -> Delivery:
    """A new delivery record for the ended job: its one message id and body."""
    kind = event_type_for(job.status.value)
    decided = job.finished_at or deps.clock()
    extra: dict[str, Any] = {"error_code": job.error.code} if job.error else {}
    # Links are added at each attempt (`with_links`), never stored.
    extra["outputs"] = [
        {"filename": o.filename, "content_type": o.content_type, "size": o.size}
        for o in job.outputs
    ]
    body = event_payload(
        kind.value,
        job.id,
        job.status.value,
        timestamp=datetime.fromtimestamp(decided, UTC),
        extra=extra,
    )
    return Delivery(
        job_id=job.id,
        msg_id=new_message_id(),
        event_type=kind.value,
        body=body.decode(),
        next_attempt_at=deps.clock(),
    )


def with_links(deps: Deps, job: Job, body: str) -> bytes:
    """The stored body with each output's download URL signed now."""
    event = json.loads(body)
    outputs = event["data"].get("outputs") or []
    if outputs and len(outputs) == len(job.outputs):
        for output, url in zip(outputs, signed_urls(deps, job), strict=True):
            output["url"] = url
        expires = deps.clock() + deps.settings.presign_expiry_s
        event["data"]["urls_expire_at"] = (
            datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
        )
    return json.dumps(event, separators=(",", ":"), ensure_ascii=True).encode()


def run(job: Job, deps: Deps) -> Job | Later:
    """Make one delivery attempt; `Later` when the next one is due, else the job.

    `job.epoch` is the notify message's fencing token; it is kept on the record so an
    older message cannot make a second attempt.
    """
    # Two racing first messages agree on one msg_id: the first write wins.
    delivery = deps.deliveries.open(first_delivery(deps, job))
    tenant = deps.tenants.get(job.tenant_id)
    if tenant is None or not tenant.webhook_secrets or not job.webhook_url:
        raise PipelineError(f"tenant {job.tenant_id} is missing or has no webhook secret")
    if OPT_IN_EVENTS & set(job.webhook_events):
        # An event still being posted goes first; its sender drops it once it sees the
        # job ended, so this waits at most one post's timeout.
        busy_until = deps.deliveries.in_flight_until(job.id, deps.clock())
        if busy_until is not None:
            return Later(busy_until)
    settings = deps.settings
    attempt = deliver_once(
        deps.http.post,
        job.webhook_url,
        tenant.webhook_secrets,
        delivery.msg_id,
        with_links(deps, job, delivery.body),
        attempt=len(delivery.attempts) + 1,
        schedule_s=settings.webhook_retry_schedule_s,
        timeout_s=settings.webhook_timeout_s,
        clock=deps.clock,
    )
    metrics.WEBHOOK_ATTEMPTS.labels(attempt.outcome).inc()
    state: DeliveryState = "pending" if attempt.outcome == "retry" else attempt.outcome
    deps.deliveries.save(
        delivery.model_copy(
            update={
                "attempts": [*delivery.attempts, attempt],
                "state": state,
                "next_attempt_at": attempt.next_attempt_at,
                "epoch": job.epoch,
            }
        )
    )
    log = get_logger(
        job_id=job.id, stage=Stage.NOTIFY.value, tenant_id=job.tenant_id, msg_id=delivery.msg_id
    )
    if state == "pending":
        retry_at = attempt.next_attempt_at if attempt.next_attempt_at is not None else deps.clock()
        log.info("webhook_retry_parked", attempt=attempt.attempt, next_attempt_at=retry_at)
        return Later(retry_at)
    if state == "dead":
        deps.deliveries.mark_dead(job.tenant_id, job.id, deps.clock())
        log.warning("webhook_dead_lettered", attempts=attempt.attempt, reason=attempt.reason)
    else:
        log.info("webhook_delivered", attempts=attempt.attempt)
    return job
