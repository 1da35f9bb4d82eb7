"""Runs stage messages: parse, claim, call the stage, hand off, decide terminal states.

Every stage is a plain function of its subject and the deps. Fetch, render, upload and
notify are given the job (`StageFn`); intake is given an authenticated request
(`IntakeFn`). A stage returns the job when its work is done, or `Later(at)` to be run
again at `at` (a webhook back-off), and raises a `PipelineError` when it cannot go on.
Everything else happens here: parsing the message, dropping messages for unknown or
ended jobs, claiming it (messages may arrive twice: a re-sent message, a sweep), fencing
a stale holder, retrying transient errors, handing the job to the next stage and
deciding `completed` or `failed` (a refused queued request too). Besides cancel and
`fail_stale` this is the only place that decides a terminal state. A message lost with
a crashed worker is recovered by `fail_stale` from the job's lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from app.core.errors import (
    AdmissionRejected,
    Backpressure,
    ComfyUnavailable,
    IdempotencyConflict,
    JobIdTaken,
    PipelineError,
    QueueFull,
    StorageUnavailable,
)
from app.core.ids import is_job_id
from app.core.logs import get_logger
from app.core.models import (
    Job,
    JobError,
    JobStatus,
    OutputRef,
    Stage,
    StageMessage,
    StageTimes,
    StatusDetail,
    TerminalDecision,
    WebhookEventNote,
)
from app.core.schemas import IntakeMessage, JobRequest
from app.engine import metrics
from app.engine.deps import Deps
from app.engine.events import record_detail, record_started
from app.engine.heartbeat import heartbeat
from app.engine.scratch import SCRATCH_KEY_PREFIX, drop_job_folder
from app.engine.webhook_events import deliver_event, on_job_event
from app.store.keys import DELAYED_DICT, parked_key, parse_parked_key
from app.store.tenants import Tenant


@dataclass(frozen=True, slots=True)
class Later:
    """A stage's answer "not now": its message is parked and the stage runs again at `at`."""

    at: float


@dataclass(frozen=True, slots=True)
class Submission:
    """A job request of an authenticated tenant: what the intake stage is given."""

    tenant: Tenant
    user_id: str
    request: JobRequest
    idempotency_key: str | None = None
    #: The id a queued request was given by its client (None: intake picks one).
    job_id: str | None = None


#: Fetch, render, upload and notify: the job in, the job (or `Later`) out.
StageFn = Callable[[Job, Deps], Job | Later]
#: Intake: a request in, the admitted job out (it raises if the request is refused).
IntakeFn = Callable[[Submission, Deps], Job]

NEXT_STAGE: Mapping[Stage, Stage | None] = {
    Stage.FETCH: Stage.RENDER,
    Stage.RENDER: Stage.UPLOAD,
    Stage.UPLOAD: None,
}
#: Backoff before retrying a stage after a transient error: base * 2**attempt seconds.
RETRY_BASE_S = 2.0
#: Longest pause between tries of a render while ComfyUI is down.
RENDERER_RETRY_MAX_S = 30.0
#: A hand-off carries the record and the request when each is at most this big (a
#: Modal queue item may be 1 MiB; a partition holds 64 MiB, so keep items small).
CARRY_MAX_BYTES = 32 * 1024
#: A carried record is trusted only in a message younger than this: no job is purged
#: sooner after it ends (`job_retention_s` >= 60), so such a message cannot outlive its
#: job, and a message that waited longer (put back while ComfyUI was down) reads the
#: stored record instead.
CARRIED_MAX_AGE_S = 60.0


def enqueue(
    deps: Deps,
    job_id: str,
    stage: Stage,
    *,
    epoch: int = 0,
    attempt: int = 0,
    not_before: float = 0.0,
    event: WebhookEventNote | None = None,
    record: Job | None = None,
    request: str | None = None,
) -> None:
    """Put a stage message on its queue now, or park it until `not_before`.

    `record` (the job as the caller just wrote it) and `request` ride along when small
    and the message goes out now; a parked one would be too old to trust them.
    """
    now = deps.clock()
    carry = not_before <= now
    record_json = record.model_dump_json() if carry and record is not None else None
    message = StageMessage(
        job_id=job_id,
        stage=stage,
        epoch=epoch,
        attempt=attempt,
        not_before=not_before,
        event=event,
        record=_small(record_json),
        request=_small(request) if carry else None,
        sent_at=now,
    )
    if not carry:
        # Queues have no delay: park it; the sweep moves it to the queue when due.
        key = parked_key(not_before, job_id, stage, epoch, attempt)
        deps.backend.kv(DELAYED_DICT).put(key, message.model_dump_json())
        return
    deps.queue(stage).put(message.model_dump_json())
    deps.waker(stage)


def _small(text: str | None) -> str | None:
    return text if text is not None and len(text) <= CARRY_MAX_BYTES else None


def carried(deps: Deps, message: StageMessage) -> tuple[Job | None, str | None]:
    """The record and request a fresh message carries (None, None for an old one)."""
    if message.record is None or deps.clock() - message.sent_at > CARRIED_MAX_AGE_S:
        return None, None
    try:
        record = Job.model_validate_json(message.record)
    except ValidationError:
        return None, None
    return record, message.request


def release_due(deps: Deps) -> int:
    """Move parked messages whose time has come onto their queues; returns how many."""
    parked = deps.backend.kv(DELAYED_DICT)
    now = deps.clock()
    moved = 0
    for key in sorted(parked.keys()):
        if parse_parked_key(key).not_before > now:
            break
        raw = parked.pop(key)  # pop is atomic: two sweeps never move the same message
        if raw is None:
            continue
        message = StageMessage.model_validate_json(raw)
        deps.queue(message.stage).put(raw)
        deps.waker(message.stage)
        moved += 1
    return moved


def hand_off(
    deps: Deps, job: Job, stage: Stage, *, epoch: int = 0, request: str | None = None
) -> bool:
    """Queue the job for `stage` with its record (as just written); True if queued.

    A queue still full after its put timeout fails the job cleanly (the terminal decision
    releases its slots) instead of leaving it admitted with no message anywhere.
    """
    try:
        enqueue(deps, job.id, stage, epoch=epoch, record=job, request=request)
    except QueueFull as exc:
        error = JobError(code="overloaded", message=f"the {stage} queue was full; job not run")
        fail_job(deps, job, error)
        get_logger(job_id=job.id, tenant_id=job.tenant_id, stage=stage.value).error(
            "job_failed_queue_full", queue=exc.queue
        )
        return False
    return True


def after_terminal(deps: Deps, job: Job) -> None:
    """Once a job has ended: drop its scratch files and send its webhook."""
    drop_job_folder(deps, job.id)
    if job.webhook_url:
        # Marked before the message goes out, so a lost message is found and re-sent.
        deps.deliveries.mark_pending(job.id, deps.clock())
        try:
            enqueue(deps, job.id, Stage.NOTIFY)
        except QueueFull:
            # Still pending: fail_stale re-sends it once the notify queue has room.
            get_logger(job_id=job.id, stage=Stage.NOTIFY.value).warning("notify_queue_full")


def fail_job(deps: Deps, job: Job, error: JobError) -> bool:
    """Decide `failed`; True if this call decided it."""
    decided = deps.jobs.finish(job.id, JobStatus.FAILED, error=error)
    if decided:
        metrics.JOBS_FINISHED.labels(JobStatus.FAILED.value).inc()
        after_terminal(deps, job)
    return decided


def cancel_job(deps: Deps, job_id: str) -> Job:
    """Cancel a job at once (raises `AlreadyTerminal`); stages notice at their next check."""
    job = deps.jobs.cancel(job_id)
    metrics.JOBS_FINISHED.labels(JobStatus.CANCELLED.value).inc()
    deps.on_cancel(job)
    after_terminal(deps, job)
    get_logger(job_id=job_id, tenant_id=job.tenant_id).info("job_cancelled", stage=job.stage)
    return job


def _start(
    deps: Deps, job: Job, stage: Stage, epoch: int, attempt: int = 0
) -> tuple[Job, Callable[[], None]]:
    """The job as started, and a wait for its record's write.

    The write runs while the stage starts its work (where calls are round trips): nothing
    the stage does needs it, and `_work` waits for it before any later write of the record.
    """
    now = deps.clock()
    times = dict(job.stage_times)
    if stage is Stage.RENDER:
        # The time since it was queued for render was spent waiting for a renderer.
        job = job.model_copy(update={"renderer_wait_s": job.renderer_wait_at(now)})
    times[stage] = times.get(stage, StageTimes()).model_copy(
        update={"started_at": now, "finished_at": None}
    )
    started = job.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "stage": stage,
            "started_at": job.started_at or now,
            "lease_until": now + deps.settings.stage_lease_s,
            "stage_times": times,
            "epoch": epoch,
            # Known before the render starts, so cancel can stop it; one write, not two.
            "render_call_id": (
                deps.current_call_id() if stage is Stage.RENDER else job.render_call_id
            ),
        }
    )
    if stage is Stage.RENDER and started.detail is StatusDetail.RENDERING:
        # Taken back from a holder that was rendering: waiting again until a node runs.
        started = record_detail(deps, started, StatusDetail.WAITING_FOR_RENDERER)
    started = record_started(deps, started, stage, attempt)
    return started, deps.jobs.save_in_background(started)


def _finish_stage(deps: Deps, job: Job, stage: Stage) -> Job:
    now = deps.clock()
    times = dict(job.stage_times)
    times[stage] = times.get(stage, StageTimes()).model_copy(update={"finished_at": now})
    following = NEXT_STAGE[stage]
    if following is not None:
        times[following] = StageTimes(queued_at=now)
    if following is Stage.RENDER:
        job = record_detail(deps, job, StatusDetail.WAITING_FOR_RENDERER)
    return job.model_copy(
        update={
            "stage_times": times,
            "lease_until": None,
            "stage": following or stage,
        }
    )


def process_message(raw: str, deps: Deps, stages: Mapping[Stage, StageFn]) -> None:
    """Run one stage message (fetch, render, upload or notify) with `stages[message.stage]`."""
    try:
        message = StageMessage.model_validate_json(raw)
    except ValidationError:
        get_logger().error("message_malformed", raw=raw[:200])
        return
    if message.stage is Stage.NOTIFY:
        _notify(deps, message, stages)
    else:
        _work(deps, message, stages)


def _work(deps: Deps, message: StageMessage, stages: Mapping[Stage, StageFn]) -> None:
    """A work stage: the job must be running; its result goes to the next stage."""
    log = get_logger(job_id=message.job_id, stage=message.stage.value, epoch=message.epoch)
    record, request = carried(deps, message)
    found, claimed = deps.jobs.find_and_claim(
        message.job_id,
        message.stage,
        message.epoch,
        message.attempt,
        prefetch_workflow=message.stage is Stage.RENDER,
        carried=record,
        carried_request=request,
    )
    if found is None:
        log.warning("message_for_unknown_job")
        return
    log = log.bind(tenant_id=found.tenant_id)
    if found.is_terminal:
        log.info("message_for_ended_job", status=found.status.value)
        drop_job_folder(deps, found.id)
        return
    if not claimed:
        log.info("message_duplicate_dropped")
        return
    job, wait_started = _start(deps, found, message.stage, message.epoch, message.attempt)
    if job.renderer_wait_s > deps.settings.render_queue_wait_limit_s:
        wait_started()
        if fail_job(deps, job, queue_wait_error(deps, job.renderer_wait_s)):
            log.warning("job_failed", code="queue_wait_timeout")
        return
    log.info("stage_started", attempt=message.attempt)
    on_job_event(deps, job, "job.started", {"stage": message.stage.value})
    began = time.monotonic()
    try:
        with heartbeat(deps, job.id, message.stage, message.epoch):
            result = stages[message.stage](job, deps)
    except PipelineError as exc:
        wait_started()
        _observe(job, message.stage, began, "retry" if exc.retryable else "failed")
        _on_stage_error(deps, job, message, exc)
        return
    except Exception:  # a bug: fail the job cleanly, keep the traceback in logs only
        wait_started()
        _observe(job, message.stage, began, "failed")
        log.exception("stage_crashed")
        internal = PipelineError(f"internal error in {message.stage}")
        _on_stage_error(deps, job, message, internal)
        return
    wait_started()
    _observe(job, message.stage, began, "parked" if isinstance(result, Later) else "ok")
    following = NEXT_STAGE.get(message.stage)
    if following is None and not isinstance(result, Later):
        _complete(deps, _finish_stage(deps, result, message.stage), log)
        return
    # The fence: a holder taken back while it worked (fail_stale handed the job to a
    # newer epoch) must not write the record, now the newer holder's. The cancel read
    # only before a render, so no GPU container starts for a job that ended; any other
    # next stage's claim reads the terminal decision anyway and drops the job with its
    # scratch folder (issue 12: a call less per job, and a cancel costs one CPU
    # hand-off for nothing).
    current, decided = deps.jobs.holder_state(
        job.id, message.epoch, cancelled=following is Stage.RENDER and not isinstance(result, Later)
    )
    if not current:
        log.warning("stage_result_from_stale_holder_dropped")
        return
    if isinstance(result, Later):
        log.info("stage_parked", not_before=result.at)
        _run_again(deps, job, message, result.at)
        return
    job = _finish_stage(deps, result, message.stage)
    log.info("stage_finished", next=following.value if following else None)
    if decided:
        # Cancelled while this stage ran: no hand-off; the canceller already notified.
        deps.jobs.save(job)
        drop_job_folder(deps, job.id)
        discard_outputs(deps, job.outputs)
        return
    if following is not None:
        deps.jobs.save(job)
        hand_off(deps, job, following, epoch=message.epoch)


def _complete(deps: Deps, job: Job, log: FilteringBoundLogger) -> None:
    """The last stage's end: decide `completed`, with no record write and no fence read.

    `complete` is put-if-absent, so a cancel that came first stays decided, and a holder
    taken back while it uploaded stored the same keys as its successor
    (`discard_unless_completed`): one call less per job than a fence read (issue 12).
    """
    log.info("stage_finished", next=None)
    if deps.jobs.complete(job):
        metrics.JOBS_FINISHED.labels(JobStatus.COMPLETED.value).inc()
        log.info("job_completed", outputs=len(job.outputs))
        after_terminal(deps, job)
    else:
        discard_unless_completed(deps, deps.jobs.terminal(job.id), job.outputs)


def discard_unless_completed(
    deps: Deps, decision: TerminalDecision | None, outputs: list[OutputRef]
) -> None:
    """Keep nothing of a job someone else ended (`decision`), unless it ended `completed`.

    A holder taken back while it uploaded and its successor store each output under the
    same deterministic key (`output_key`), so when the other one completed the job, the
    keys this holder wrote are the completed job's outputs: deleting them would lose them.
    """
    if decision is None or decision.status is not JobStatus.COMPLETED:
        discard_outputs(deps, outputs)


def discard_outputs(deps: Deps, outputs: list[OutputRef]) -> None:
    """Delete a job's outputs already in the object store (scratch references skipped).

    For a job that ended without completing: its view lists no outputs, so none stay.
    """
    keys = [o.key for o in outputs if not o.key.startswith(SCRATCH_KEY_PREFIX)]
    if keys:
        deps.objects.delete_keys(keys)


def _observe(job: Job, stage: Stage, began: float, outcome: str) -> None:
    elapsed = time.monotonic() - began
    metrics.STAGE_SECONDS.labels(stage.value, outcome).observe(elapsed)
    if stage is Stage.RENDER:
        metrics.RENDER_SECONDS.labels(job.tenant_id).inc(elapsed)


def _run_again(deps: Deps, job: Job, message: StageMessage, at: float) -> None:
    """Release the job and park its next attempt at this stage until `at`."""
    deps.jobs.save(job.model_copy(update={"lease_until": None}))
    enqueue(
        deps,
        job.id,
        message.stage,
        epoch=message.epoch,
        attempt=message.attempt + 1,
        not_before=at,
    )


def _notify(deps: Deps, message: StageMessage, stages: Mapping[Stage, StageFn]) -> None:
    """Notify: the job must have ended with a webhook and a delivery still pending.

    The stage sees the job with `epoch` set to the message's (the notify lane's fencing
    token, which `fail_stale` raises when it re-sends a lost message).
    """
    log = get_logger(job_id=message.job_id, stage=Stage.NOTIFY.value)
    if message.event is not None:  # a non-terminal event: no record, no claim
        if (retry_at := deliver_event(deps, message)) is not None:
            enqueue(
                deps,
                message.job_id,
                Stage.NOTIFY,
                attempt=message.attempt + 1,
                not_before=retry_at,
                event=message.event,
            )
        return
    job = deps.jobs.find(message.job_id)
    if job is None or not job.is_terminal or not job.webhook_url:
        log.warning("notify_without_terminal_job")
        return
    delivery = deps.deliveries.get(job.id)
    if delivery is not None and (delivery.state != "pending" or message.epoch < delivery.epoch):
        log.info("notify_message_dropped", state=delivery.state)
        return
    if not deps.jobs.claim_stage(job.id, Stage.NOTIFY, message.epoch, message.attempt):
        log.info("message_duplicate_dropped")
        return
    try:
        result = stages[Stage.NOTIFY](job.model_copy(update={"epoch": message.epoch}), deps)
    except PipelineError as exc:
        # Left pending: the sweep re-sends the message once it is overdue.
        log.error("notify_failed", tenant_id=job.tenant_id, code=exc.code, error=exc.message)
        return
    if isinstance(result, Later):
        enqueue(
            deps,
            job.id,
            Stage.NOTIFY,
            epoch=message.epoch,
            attempt=message.attempt + 1,
            not_before=result.at,
        )
        return
    deps.deliveries.settle(job.id)


def process_intake_message(raw: str, deps: Deps, intake: IntakeFn) -> None:
    """Admit one queued request; a refusal is recorded as a failed job under its id."""
    try:
        message = IntakeMessage.model_validate_json(raw)
    except ValidationError as exc:
        get_logger(stage=Stage.INTAKE.value).warning(
            "intake_message_invalid", errors=exc.error_count(), job_id=_job_id_of(raw)
        )
        return
    log = get_logger(job_id=message.job_id, stage=Stage.INTAKE.value)
    if not is_job_id(message.job_id) or deps.jobs.find(message.job_id) is not None:
        log.warning("intake_job_id_refused")  # not ours, or taken: nothing is written under it
        if is_job_id(message.job_id):
            deps.intakes.clear(message.job_id)  # a duplicate of an admitted request
        return
    tenant = _intake_tenant(deps, message)
    if tenant is None:
        log.warning("intake_unauthenticated")  # no tenant to record a failure under
        return
    submission = Submission(
        tenant=tenant,
        user_id=message.user_id,
        request=message.request,
        idempotency_key=message.idempotency_key,
        job_id=message.job_id,
    )
    try:
        intake(submission, deps)
        deps.intakes.clear(message.job_id)  # the record exists: nothing left to lose
        return
    except JobIdTaken:
        log.warning("intake_job_id_refused")  # lost a race for the id: the winner's job stands
        deps.intakes.clear(message.job_id)
        return
    except AdmissionRejected as exc:
        error = JobError(code=exc.code, message=exc.message)
    except IdempotencyConflict as exc:
        error = JobError(code="idempotency_conflict", message=str(exc))
    except PipelineError as exc:
        error = JobError(code=exc.code, message=exc.message)
    except Backpressure:
        log.warning("intake_job_failed_backpressure")  # already failed under its id
        deps.intakes.clear(message.job_id)
        return
    if deps.jobs.reject(message.job_id, tenant.id, message.user_id, error):
        metrics.JOBS_FINISHED.labels(JobStatus.FAILED.value).inc()
    deps.intakes.clear(message.job_id)
    log.bind(tenant_id=tenant.id).warning("job_rejected", code=error.code, error=error.message)


def _intake_tenant(deps: Deps, message: IntakeMessage) -> Tenant | None:
    """The message's tenant: by its API key, or (re-admitted, no key) by its marker."""
    if message.api_key:
        return deps.tenants.authenticate(message.api_key)
    pending = deps.intakes.get(message.job_id)
    if pending is None or pending.user_id != message.user_id:
        return None
    tenant = deps.tenants.get(pending.tenant_id)
    return None if tenant is None or tenant.disabled else tenant


def _job_id_of(raw: str) -> Any:
    try:
        return json.loads(raw).get("job_id")
    except (ValueError, AttributeError):
        return None


def queue_wait_error(deps: Deps, waited_s: float) -> JobError:
    """The failure of a job that waited too long for a renderer (not its own timeout)."""
    limit = deps.settings.render_queue_wait_limit_s
    return JobError(
        code="queue_wait_timeout",
        message=f"waited {waited_s:.0f} s for a renderer, over the limit of {limit} s",
    )


def _wait_for_renderer(deps: Deps, job: Job, message: StageMessage) -> None:
    """ComfyUI is down: try again later without using up an attempt, within the wait limit.

    The failed attempt and the time until the next one count as waiting for a renderer
    (`renderer_wait_s`), not against the job's timeout.
    """
    now = deps.clock()
    times = dict(job.stage_times)
    started = times.get(Stage.RENDER, StageTimes()).started_at or now
    waited = job.renderer_wait_s + max(0.0, now - started)
    if waited > deps.settings.render_queue_wait_limit_s:
        fail_job(deps, job, queue_wait_error(deps, waited))
        return
    times[Stage.RENDER] = times.get(Stage.RENDER, StageTimes()).model_copy(
        update={"queued_at": now}
    )
    delay = min(RETRY_BASE_S * 2 ** min(message.attempt, 8), RENDERER_RETRY_MAX_S)
    get_logger(job_id=job.id, stage=Stage.RENDER.value, tenant_id=job.tenant_id).warning(
        "renderer_unavailable_waiting", waited_s=round(waited, 1), retry_in_s=delay
    )
    metrics.RETRIES.labels(Stage.RENDER.value, ComfyUnavailable.code).inc()
    # Queued again, and saying why: the wait counts against the queue-wait limit only.
    waiting = record_detail(
        deps,
        job.model_copy(
            update={"renderer_wait_s": waited, "stage_times": times, "status": JobStatus.QUEUED}
        ),
        StatusDetail.RENDERER_UNAVAILABLE,
        retry_in_s=delay,
    )
    _run_again(deps, waiting, message, now + delay)


def without_record(raw: str) -> str:
    """A stage message without the record it carries (as it was, if it is not one)."""
    try:
        return _dropping_record(StageMessage.model_validate_json(raw))
    except ValidationError:
        return raw


def _dropping_record(message: StageMessage) -> str:
    return message.model_copy(update={"record": None}).model_dump_json()


def note_renderer_unavailable(deps: Deps, raw: str) -> str:
    """A render message goes back to its queue because ComfyUI is down: the job says so.

    Called by the worker that took the message, before it puts it back, so no holder
    writes the record meanwhile. Written once per outage (a read each time, a write only
    when the detail changes); the wait is counted from the render `queued_at` as ever.
    Returns the message to put back: without a carried record, which this write (or an
    earlier one) may have made stale.
    """
    try:
        message = StageMessage.model_validate_json(raw)
    except ValidationError:
        return raw
    back = _dropping_record(message)
    job = deps.jobs.find(message.job_id)
    if (
        job is None
        or job.is_terminal
        or job.stage is not Stage.RENDER
        or job.lease_until is not None
        or job.detail is StatusDetail.RENDERER_UNAVAILABLE
    ):
        return back
    queued = job.model_copy(update={"status": JobStatus.QUEUED})
    deps.jobs.save(record_detail(deps, queued, StatusDetail.RENDERER_UNAVAILABLE))
    return back


def _max_attempts(deps: Deps, exc: PipelineError) -> int:
    """Storage outages last longer than a flaky call: they get their own, larger budget."""
    if isinstance(exc, StorageUnavailable):
        return max(deps.settings.storage_retry_attempts, deps.settings.stage_max_attempts)
    return deps.settings.stage_max_attempts


def _on_stage_error(deps: Deps, job: Job, message: StageMessage, exc: PipelineError) -> None:
    logger = get_logger(job_id=job.id, stage=message.stage.value, tenant_id=job.tenant_id)
    if (
        isinstance(exc, ComfyUnavailable)
        and message.stage is Stage.RENDER
        and deps.jobs.terminal(job.id) is None
    ):
        _wait_for_renderer(deps, job, message)
        return
    attempts_left = message.attempt + 1 < _max_attempts(deps, exc)
    if exc.retryable and attempts_left and deps.jobs.terminal(job.id) is None:
        delay = RETRY_BASE_S * 2**message.attempt
        metrics.RETRIES.labels(message.stage.value, exc.code).inc()
        logger.warning(
            "stage_retry_scheduled",
            code=exc.code,
            error=exc.message,
            attempt=message.attempt + 1,
            delay_s=delay,
        )
        _run_again(deps, job, message, deps.clock() + delay)
        return
    error = JobError(
        code=exc.code,
        message=exc.message,
        node_id=getattr(exc, "node_id", None),
        node_type=getattr(exc, "node_type", None),
    )
    if fail_job(deps, job, error):
        logger.warning("job_failed", code=exc.code, error=exc.message)
    else:
        logger.info("stage_error_after_job_ended", code=exc.code)
