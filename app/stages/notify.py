"""Notify: deliver a job's terminal event to its webhook, signed per Standard Webhooks.

One delivery per job, with one `webhook-id` and one body for its whole life; each attempt
is re-signed with a fresh timestamp. Retries are parked messages (the sweep puts them back
on the queue when due), never a sleeping worker. The delivery log lives in the
`deliveries` dict under the job id and ends `delivered` or `dead` (the dead-letter state).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError

from app.adapters.webhooks.delivery import deliver_once
from app.adapters.webhooks.signing import event_payload, event_type_for, new_message_id
from app.core.logs import get_logger
from app.core.models import Job, Stage, StageMessage
from app.engine.deps import Deps
from app.engine.pipeline import enqueue
from app.store.deliveries import Delivery, DeliveryState, load_delivery
from app.store.keys import DELIVERIES_DICT, PENDING_DICT, delivery_key, pending_key


def _open_delivery(deps: Deps, job: Job) -> Delivery:
    kind = event_type_for(job.status.value)
    decided = job.finished_at or deps.clock()
    body = event_payload(
        kind.value,
        job.id,
        job.status.value,
        timestamp=datetime.fromtimestamp(decided, UTC),
        extra={"error_code": job.error.code} if job.error else None,
    )
    fresh = Delivery(
        job_id=job.id,
        msg_id=new_message_id(),
        event_type=kind.value,
        body=body.decode(),
        next_attempt_at=deps.clock(),
    )
    # Two racing first messages agree on one msg_id: the first write wins.
    deps.backend.kv(DELIVERIES_DICT).put_if_absent(delivery_key(job.id), fresh.model_dump_json())
    existing = load_delivery(deps.backend, job.id)
    return existing or fresh


def process_notify_message(raw: str, deps: Deps) -> None:
    """Make one delivery attempt for a terminal job and park the next one if needed."""
    try:
        message = StageMessage.model_validate_json(raw)
    except ValidationError:
        get_logger(stage=Stage.NOTIFY.value).error("message_malformed", raw=raw[:200])
        return
    log = get_logger(job_id=message.job_id, stage=Stage.NOTIFY.value)
    job = deps.jobs.find(message.job_id)
    if job is None or not job.is_terminal or not job.webhook_url:
        log.warning("notify_without_terminal_job")
        return
    delivery = _open_delivery(deps, job)
    if delivery.state != "pending" or message.epoch < delivery.epoch:
        log.info("notify_message_dropped", state=delivery.state)
        return
    if not deps.jobs.claim_stage(job.id, Stage.NOTIFY, message.epoch, message.attempt):
        log.info("message_duplicate_dropped")
        return
    tenant = deps.tenants.get(job.tenant_id)
    if tenant is None or not tenant.webhook_secrets:
        log.error("notify_tenant_missing", tenant_id=job.tenant_id)
        return
    settings = deps.settings
    attempt = deliver_once(
        deps.http.post,
        job.webhook_url,
        tenant.webhook_secrets,
        delivery.msg_id,
        delivery.body.encode(),
        attempt=len(delivery.attempts) + 1,
        schedule_s=settings.webhook_retry_schedule_s,
        timeout_s=settings.webhook_timeout_s,
        clock=deps.clock,
    )
    state: DeliveryState = "pending" if attempt.outcome == "retry" else attempt.outcome
    updated = delivery.model_copy(
        update={
            "attempts": [*delivery.attempts, attempt],
            "state": state,
            "next_attempt_at": attempt.next_attempt_at,
            "epoch": message.epoch,
        }
    )
    deps.backend.kv(DELIVERIES_DICT).put(delivery_key(job.id), updated.model_dump_json())
    if state != "pending":
        deps.backend.kv(PENDING_DICT).pop(pending_key(job.id))
    log = log.bind(tenant_id=job.tenant_id, msg_id=delivery.msg_id)
    if attempt.outcome == "retry" and attempt.next_attempt_at is not None:
        enqueue(
            deps,
            job.id,
            Stage.NOTIFY,
            epoch=message.epoch,
            attempt=message.attempt + 1,
            not_before=attempt.next_attempt_at,
        )
        log.info(
            "webhook_retry_parked", attempt=attempt.attempt, next_attempt_at=attempt.next_attempt_at
        )
    elif attempt.outcome == "dead":
        log.warning("webhook_dead_lettered", attempts=attempt.attempt, reason=attempt.reason)
    else:
        log.info("webhook_delivered", attempts=attempt.attempt)
