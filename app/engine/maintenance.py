"""Scheduled maintenance, the same code locally (`comfyui-saas fail-stale|cleanup`) and on Modal.

* `sweep`: every few seconds locally, every minute on Modal: moves due parked messages
  (retries, webhook back-off) onto their queues and wakes any stage whose queue is not
  empty, so a raw `Queue.put` without a wake-up is still picked up.
* `fail_stale`: takes jobs back from dead holders (lease expired), fails jobs past their
  deadline or out of attempts, re-sends messages that were lost (stage messages, webhook
  messages, queued requests whose pending-intake marker outlived them), frees leaked
  slots.
* `cleanup`: removes outputs and records past their retention, expired uploads, and
  orphaned scratch folders.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from app.core.logs import get_logger
from app.core.models import Job, JobError, JobStatus, Stage, StageTimes
from app.core.schemas import IntakeMessage
from app.engine.deps import Deps
from app.engine.metrics import log_counters
from app.engine.pipeline import enqueue, fail_job, queue_wait_error, release_due
from app.engine.uploads import remove_expired
from app.store.backends.base import scan_items
from app.store.deliveries import load_delivery
from app.store.jobs import RATE_WINDOW_S, REQUEUE_AFTER_S
from app.store.keys import (
    DELAYED_DICT,
    IDEM_DICT,
    PENDING_DICT,
    RATES_DICT,
    parse_parked_key,
    parse_rate_window,
    pending_key,
)

#: Work stages a job can be waiting for; notify runs after the terminal decision.
WORK_STAGES = (Stage.FETCH, Stage.RENDER, Stage.UPLOAD)
#: Grace after a job's deadline before fail_stale fails it (render enforces it first).
DEADLINE_GRACE_S = 60
#: A queued request whose job record has not appeared this long after its marker was
#: written (or last re-admitted) is put back on the intake queue; intake takes well
#: under a second, so this is long only for a worker that died with the message.
INTAKE_RECOVER_AFTER_S = 30
#: Re-admissions of one request before it is recorded as a failed job.
INTAKE_MAX_RESENDS = 3
#: A store write older than this that never finished was cut short (writes take seconds).
PARTIAL_WRITE_GRACE_S = 3600


@dataclass(slots=True)
class StaleReport:
    """What one fail_stale pass did."""

    taken_back: int = 0
    timed_out: int = 0
    lost: int = 0
    requeued: int = 0
    intakes_recovered: int = 0
    intakes_failed: int = 0
    slots_released: int = 0
    active_removed: int = 0


def sweep(deps: Deps) -> dict[str, int]:
    """Release due parked messages, then wake every stage with work waiting.

    The same code runs every few seconds locally and every minute on Modal; `deps` says
    how many consumer calls are already waiting to start and how many renders can run at
    once (`waiting_calls`, `render_parallel`), which decides how many wake-ups each stage
    gets (`wake_plan`).
    """
    report = {"released": release_due(deps)}
    lengths = {stage: deps.queue(stage).len() for stage in Stage}
    waiting = {stage: deps.waiting_calls(stage) for stage, length in lengths.items() if length}
    plan = wake_plan(lengths, waiting, deps.render_parallel)
    for stage, count in plan.items():
        for _ in range(count):
            deps.waker(stage)
    report.update({stage.value: length for stage, length in lengths.items()})
    report["woken"] = sum(plan.values())
    get_logger().info(
        "sweep_done",
        released=report["released"],
        queued={stage.value: n for stage, n in lengths.items() if n},
        woken={stage.value: n for stage, n in plan.items()},
    )
    return report


def wake_plan(
    queue_lengths: Mapping[Stage, int],
    waiting_calls: Mapping[Stage, int],
    render_parallel: int,
) -> dict[Stage, int]:
    """How many times the sweep wakes each stage's consumer.

    A CPU consumer drains its queue until empty, so one wake-up is enough, and none while
    a consumer call is already waiting to start. A render call takes exactly one message
    (on Modal), so render gets one wake-up per message not yet covered by a waiting call,
    at most as many as can run at once (the next sweep tops up the rest). Locally no call
    is ever waiting and `render_parallel` is 1: one wake-up per stage with work.
    """
    plan: dict[Stage, int] = {}
    for stage, length in queue_lengths.items():
        waiting = waiting_calls.get(stage, 0)
        if length <= 0:
            continue
        if stage is Stage.RENDER:
            count = min(length - waiting, render_parallel)
        else:
            count = 0 if waiting > 0 else 1
        if count > 0:
            plan[stage] = count
    return plan


def fail_stale(deps: Deps) -> dict[str, int]:
    """One reaper pass over the active jobs (see module docstring)."""
    report = StaleReport()
    reconciled = deps.jobs.reconcile()
    report.slots_released = reconciled.slots_released
    report.active_removed = reconciled.active_removed
    now = deps.clock()
    empty_queues = {stage for stage in WORK_STAGES if deps.queue(stage).len() == 0}
    parked = parked_job_ids(deps)
    for job_id in list(deps.jobs.active_ids()):
        job = deps.jobs.find(job_id)
        if job is None or job.is_terminal:
            continue
        _reap(deps, job, now, empty_queues, parked, report)
    report.requeued += _resend_lost_deliveries(deps, now, parked)
    _recover_intakes(deps, now, report)
    result = asdict(report)
    get_logger().info("fail_stale_done", **result)
    log_counters(deps, "fail_stale")
    return result


def _reap(
    deps: Deps,
    job: Job,
    now: float,
    empty_queues: set[Stage],
    parked: set[str],
    report: StaleReport,
) -> None:
    log = get_logger(job_id=job.id, tenant_id=job.tenant_id, stage=job.stage.value)
    if (
        job.waiting_for_renderer()
        and job.renderer_wait_at(now) > deps.settings.render_queue_wait_limit_s
    ):
        if fail_job(deps, job, queue_wait_error(deps, job.renderer_wait_at(now))):
            report.timed_out += 1
            log.warning("job_queue_wait_timed_out")
        return
    if now > job.deadline_at(now) + DEADLINE_GRACE_S:
        error = JobError(code="timeout", message=f"job exceeded its timeout of {job.timeout_s} s")
        if fail_job(deps, job, error):
            report.timed_out += 1
            log.warning("job_timed_out")
        return
    lease_until = deps.jobs.lease_until(job)  # heartbeats included
    holder_died = lease_until is not None and now > lease_until
    queued = job.stage_times.get(job.stage, StageTimes()).queued_at
    # Lost if nobody took it: soon when its queue is empty, and after the job's own
    # queued-at age passes a longer limit even under a sustained backlog (a duplicate
    # of a message still queued is fenced by the epoch, never run twice).
    age = now - queued if queued is not None else 0.0
    message_lost = (
        job.lease_until is None
        and queued is not None
        and job.id not in parked
        and (
            (job.stage in empty_queues and age > REQUEUE_AFTER_S)
            or age > deps.settings.requeue_under_backlog_after_s
        )
    )
    if not (holder_died or message_lost):
        return
    epoch = deps.jobs.take_back(job.id, job.epoch)
    if epoch is None:
        return  # another reaper got there first
    if epoch >= deps.settings.stage_max_attempts:
        error = JobError(code="stage_lost", message=f"the {job.stage} stage was lost {epoch} times")
        if fail_job(deps, job, error):
            report.lost += 1
            log.warning("job_lost")
        return
    _hand_back(deps, job, epoch)
    if holder_died:
        report.taken_back += 1
        log.warning("job_taken_back", epoch=epoch)
    else:
        report.requeued += 1
        log.warning("job_message_resent", epoch=epoch)


def _resend_lost_deliveries(deps: Deps, now: float, parked: set[str]) -> int:
    """Re-send notify messages lost with a crashed worker (the delivery stays pending)."""
    if deps.queue(Stage.NOTIFY).len():
        return 0  # a backlog: the message is likely still queued
    pending = deps.backend.kv(PENDING_DICT)
    # A message a worker took is in its hands for at most one webhook timeout: past that
    # (and a lease of slack for a slow worker) its holder died. One nobody took is lost
    # only after REQUEUE_AFTER_S. A late duplicate carries the same webhook-id.
    in_hand_s = deps.settings.webhook_timeout_s + deps.settings.stage_lease_s
    resent = 0
    for job_id in list(pending.keys()):
        delivery = load_delivery(deps.backend, job_id)
        if delivery is not None and delivery.state != "pending":
            pending.pop(pending_key(job_id))
            continue
        due = (
            delivery.next_attempt_at if delivery else float(pending.get(pending_key(job_id)) or now)
        )
        if due is None or job_id in parked:
            continue
        claimed = deps.jobs.claimed_at(
            job_id,
            Stage.NOTIFY,
            delivery.epoch if delivery else 0,
            len(delivery.attempts) if delivery else 0,
        )
        if (claimed is not None and now - claimed < in_hand_s) or (
            claimed is None and now - due < REQUEUE_AFTER_S
        ):
            continue
        epoch = deps.jobs.take_back(job_id, delivery.epoch if delivery else 0, lane="notify")
        if epoch is None:
            continue
        attempt = len(delivery.attempts) if delivery else 0
        enqueue(deps, job_id, Stage.NOTIFY, epoch=epoch, attempt=attempt)
        get_logger(job_id=job_id, stage=Stage.NOTIFY.value).warning("webhook_message_resent")
        resent += 1
    return resent


def _recover_intakes(deps: Deps, now: float, report: StaleReport) -> None:
    """Re-admit queued requests lost with an intake worker; give up after a few tries."""
    if deps.queue(Stage.INTAKE).len():
        return  # a backlog: the message is likely still queued
    for pending in deps.intakes.all():
        if deps.jobs.find(pending.job_id) is not None:
            deps.intakes.clear(pending.job_id)  # admitted; the clear was lost
            continue
        if now - pending.at < INTAKE_RECOVER_AFTER_S:
            continue
        log = get_logger(job_id=pending.job_id, tenant_id=pending.tenant_id, stage="intake")
        if pending.resent >= INTAKE_MAX_RESENDS:
            error = JobError(code="intake_lost", message="the request could not be admitted")
            deps.jobs.reject(pending.job_id, pending.tenant_id, pending.user_id, error)
            deps.intakes.clear(pending.job_id)
            report.intakes_failed += 1
            log.warning("intake_given_up", resent=pending.resent)
            continue
        deps.intakes.mark(pending.model_copy(update={"resent": pending.resent + 1, "at": now}))
        message = IntakeMessage(
            job_id=pending.job_id,
            api_key="",  # authenticated by the marker
            user_id=pending.user_id,
            request=pending.request,
            idempotency_key=pending.idempotency_key,
        )
        deps.queue(Stage.INTAKE).put(message.model_dump_json())
        deps.waker(Stage.INTAKE)
        report.intakes_recovered += 1
        log.warning("intake_recovered", resent=pending.resent + 1)


def _hand_back(deps: Deps, job: Job, epoch: int) -> None:
    """Give the job to its stage again under `epoch` (already taken with `take_back`)."""
    times = dict(job.stage_times)
    times[job.stage] = StageTimes(queued_at=deps.clock())
    handed = job.model_copy(update={"epoch": epoch, "lease_until": None, "stage_times": times})
    deps.jobs.save(handed)
    enqueue(deps, job.id, job.stage, epoch=epoch, record=handed)


def parked_job_ids(deps: Deps) -> set[str]:
    """Jobs with a message parked for later (a retry or a webhook back-off)."""
    return {parse_parked_key(key).job_id for key in deps.backend.kv(DELAYED_DICT).keys()}


def recover_after_restart(deps: Deps) -> int:
    """Local runner start-up: no worker is alive yet, so every held job is orphaned."""
    recovered = 0
    for job_id in list(deps.jobs.active_ids()):
        job = deps.jobs.find(job_id)
        if job is None or job.is_terminal or job.lease_until is None:
            continue
        epoch = deps.jobs.take_back(job.id, job.epoch)
        if epoch is None:
            continue
        _hand_back(deps, job, epoch)
        recovered += 1
    return recovered


def cleanup(deps: Deps) -> dict[str, int]:
    """Remove what is past retention: outputs, job records, idempotency keys, expired
    uploads, scratch."""
    now = deps.clock()
    settings = deps.settings
    report = {
        "outputs_deleted": 0,
        "partial_removed": 0,
        "jobs_deleted": 0,
        "keys_deleted": 0,
        "uploads_deleted": 0,
        "scratch_removed": 0,
    }
    old_outputs = deps.objects.list_older_than("outputs/", now - settings.output_retention_s)
    report["outputs_deleted"] = deps.objects.delete_keys(old_outputs)
    # A write takes seconds; one older than an hour was cut short by a kill.
    report["partial_removed"] = deps.objects.remove_partial(now - PARTIAL_WRITE_GRACE_S)
    # The retention index, not a scan of every ended job: the cost is the jobs now due.
    limit = settings.cleanup_max_jobs_per_run
    report["jobs_deleted"] = deps.jobs.purge_due(now - settings.job_retention_s, limit)
    if report["jobs_deleted"] >= limit:
        # Behind: the next run resumes where this one stopped. Seen for an hour or two
        # after a burst; seen every run, cleanup needs a higher limit or more runs.
        get_logger().warning("cleanup_limit_reached", jobs_deleted=report["jobs_deleted"])
    # Idempotency records and rate windows live in dicts of their own, so these scans
    # read only records of the last day or so, never the job history.
    # One stream of keys with values, not a get per key: cleanup runs hourly over a
    # day's records (10,000 at 2,000 daily users).
    idem = deps.backend.kv(IDEM_DICT)
    for key, raw in list(scan_items(idem)):
        if now - float(json.loads(raw)["at"]) > settings.idempotency_ttl_s:
            idem.pop(key)
            report["keys_deleted"] += 1
    current_window = int(now // RATE_WINDOW_S)
    rates = deps.backend.kv(RATES_DICT)
    for key in list(rates.keys()):
        if parse_rate_window(key) < current_window - 1:
            rates.pop(key)
            report["keys_deleted"] += 1
    # The uploads dict holds live uploads only (expired ones go here), so its scan is small.
    report["uploads_deleted"] = remove_expired(deps)
    report["scratch_removed"] = _remove_orphan_scratch(deps)
    get_logger().info("cleanup_done", **report)
    log_counters(deps, "cleanup")
    return report


def _remove_orphan_scratch(deps: Deps) -> int:
    root = deps.settings.work_dir
    if not root.is_dir():
        return 0
    removed = 0
    for folder in root.iterdir():
        job = deps.jobs.find(folder.name)
        if job is None or job.status in (
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        ):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed
