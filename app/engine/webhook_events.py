"""Opt-in non-terminal webhook events: `job.started` at each stage start, `job.progress`.

A job asks for them with `webhook_events` at submission; a job that did not costs nothing
here (`on_job_event` returns before any call). An event is signed and retried like the
terminal one (Standard Webhooks, `webhook_retry_schedule_s`), but it is sent by the
notify workers, never by the stage that raised it: `on_job_event` only puts a message on
the notify queue, in the background where calls are round trips, and at most
`MAX_IN_FLIGHT` such puts at once (beyond that the event is dropped with a log line). So
an event never delays the job, and nothing about it can fail the job.

Order: no event reaches a receiver after the job's terminal event. Before each attempt
the sender marks the event in flight and only then reads whether the job has ended (if
it has, the event is dropped); the terminal delivery, which starts only after the job
ended, waits while a mark is live (`app.stages.notify`). One of the two always sees the
other. A mark expires after one post's timeout and a margin, in case its sender died.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from app.adapters.webhooks.delivery import deliver_once
from app.adapters.webhooks.signing import EventType, event_payload, new_message_id
from app.core.logs import get_logger
from app.core.models import Job, Stage, StageMessage, WebhookEventNote
from app.engine import metrics
from app.engine.deps import Deps
from app.store.parallel import in_background, is_concurrent

#: Event puts running at once in one process; more are dropped (the job goes on).
MAX_IN_FLIGHT = 32
#: Jobs whose last progress event time is remembered (the oldest are forgotten).
_REMEMBERED_JOBS = 4096
#: Added to the post timeout for an in-flight mark's life (clock skew, slow bookkeeping).
MARK_MARGIN_S = 5.0

_lock = threading.Lock()
_in_flight = 0
_last_progress: OrderedDict[str, float] = OrderedDict()


def on_job_event(deps: Deps, job: Job, kind: str, data: dict[str, Any] | None = None) -> None:
    """Send event `kind` for `job` if the job opted in to it (never raises)."""
    if kind not in job.webhook_events or not job.webhook_url:
        return
    try:
        if kind == EventType.JOB_PROGRESS and not _progress_due(deps, job.id):
            return
        extra = dict(data or {})
        if kind == EventType.JOB_PROGRESS:
            extra["progress"] = round(job.progress, 4)
        body = event_payload(
            kind,
            job.id,
            job.status.value,
            timestamp=datetime.fromtimestamp(deps.clock(), UTC),
            extra=extra,
        )
        note = WebhookEventNote(msg_id=new_message_id(), type=kind, body=body.decode())
        message = StageMessage(job_id=job.id, stage=Stage.NOTIFY, event=note)
        _send_in_background(deps, message.model_dump_json(), job.id, kind)
    except Exception:  # noqa: BLE001 - an event must never fail the job
        get_logger(job_id=job.id).exception("webhook_event_not_sent", type=kind)


def _progress_due(deps: Deps, job_id: str) -> bool:
    """Whether a progress event may go now (at most one per interval per job)."""
    now = deps.clock()
    with _lock:
        last = _last_progress.get(job_id)
        if last is not None and now - last < deps.settings.webhook_progress_interval_s:
            return False
        _last_progress[job_id] = now
        _last_progress.move_to_end(job_id)
        while len(_last_progress) > _REMEMBERED_JOBS:
            _last_progress.popitem(last=False)
    return True


def _send_in_background(deps: Deps, raw: str, job_id: str, kind: str) -> None:
    global _in_flight
    with _lock:
        if _in_flight >= MAX_IN_FLIGHT:
            get_logger(job_id=job_id).warning("webhook_event_dropped", type=kind, reason="busy")
            return
        _in_flight += 1

    def send() -> None:
        global _in_flight
        try:
            deps.queue(Stage.NOTIFY).put(raw)
            deps.waker(Stage.NOTIFY)
        except Exception:  # noqa: BLE001 - a full queue or a store hiccup loses the event
            get_logger(job_id=job_id).warning("webhook_event_dropped", type=kind, reason="queue")
        finally:
            with _lock:
                _in_flight -= 1

    in_background(is_concurrent(deps.backend), send)


def deliver_event(deps: Deps, message: StageMessage) -> float | None:
    """Make one attempt of the message's event; when to try again, or None (done)."""
    note = message.event
    assert note is not None
    log = get_logger(job_id=message.job_id, stage=Stage.NOTIFY.value, msg_id=note.msg_id)
    settings = deps.settings
    until = deps.clock() + settings.webhook_timeout_s + MARK_MARGIN_S
    deps.deliveries.mark_in_flight(message.job_id, note.msg_id, until)
    try:
        job = deps.jobs.find(message.job_id)  # read after the mark: see the module's doc
        if job is None or job.is_terminal or not job.webhook_url:
            log.info("webhook_event_dropped", type=note.type, reason="job ended")
            return None
        tenant = deps.tenants.get(job.tenant_id)
        if tenant is None or not tenant.webhook_secrets:
            log.warning("webhook_event_dropped", type=note.type, reason="no webhook secret")
            return None
        attempt = deliver_once(
            deps.http.post,
            job.webhook_url,
            tenant.webhook_secrets,
            note.msg_id,
            note.body.encode(),
            attempt=message.attempt + 1,
            schedule_s=settings.webhook_retry_schedule_s,
            timeout_s=settings.webhook_timeout_s,
            clock=deps.clock,
        )
    finally:
        deps.deliveries.clear_in_flight(message.job_id, note.msg_id)
    metrics.WEBHOOK_ATTEMPTS.labels(attempt.outcome).inc()
    if attempt.outcome == "retry":
        return attempt.next_attempt_at if attempt.next_attempt_at is not None else deps.clock()
    if attempt.outcome == "dead":
        log.warning("webhook_event_dead", type=note.type, reason=attempt.reason)
    return None
