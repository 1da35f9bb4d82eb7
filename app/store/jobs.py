"""The job state core: records, admission, terminal decisions, cancel, reconciliation.

Written only against the `KV`/`Queue` protocol and correct with nothing but
put-if-absent, so it behaves the same on Modal and on the local backend.

Who writes what (the single-writer rule; no record has two writers at once):

* ``job:{id}``      intake creates it; afterwards only the stage holding the job (or
                    fail_stale, which takes a job back from a dead holder) rewrites it.
* ``request:{id}``  the workflow, written once by intake, read by render.
* ``terminal:{id}`` the one terminal decision, created once by put-if-absent. Whoever
                    creates it releases the job's admission slots. Reads merge it over
                    ``job:{id}``, so a late writer can never undo it.
* ``claim:{id}:{stage}:{epoch}:{attempt}`` taken by the worker that runs a stage message, so a
                    duplicate message (queues are at-least-once here) runs nothing.
* ``lease:{id}``    the holder's heartbeat (stage, epoch, until), renewed every few seconds
                    while a stage works; a separate key so a renewal never races the
                    holder's own writes of ``job:{id}``.
* ``epoch:{id}:{lane}:{n}`` taken by fail_stale when it hands a job to a stage again; a zombie
                    worker of an older epoch sees it and stops (a fencing token).

Clients never rewrite a record: cancel is a terminal decision, nothing more. Key formats
live in `app.store.keys`; `purge` removes every key a job owns once cleanup decides its
retention is over.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel

from app.core.errors import (
    AdmissionRejected,
    AlreadyTerminal,
    IdempotencyConflict,
    JobNotFound,
)
from app.core.models import (
    InputSpec,
    Job,
    JobError,
    JobStatus,
    OutputRef,
    SlotRef,
    Stage,
    StageTimes,
    TerminalDecision,
)
from app.store.backends.base import KV, Backend
from app.store.claims import (
    SlotHolder,
    claim_next,
    claim_slot,
    held_slots,
    purge_slot,
    release_slot,
    sequence_end,
)
from app.store.keys import (
    ACTIVE_DICT,
    ADMISSION_DICT,
    DEAD_DICT,
    DELAYED_DICT,
    DELIVERIES_DICT,
    INTAKE_DICT,
    JOBS_DICT,
    PENDING_DICT,
    SLOTS_DICT,
    TERMINAL_PREFIX,
    active_key,
    claim_key,
    dead_key,
    delivery_key,
    epoch_key,
    idem_key,
    idem_prefix,
    index_prefix,
    intake_key,
    job_key,
    job_owned_prefixes,
    lease_key,
    parse_job_owned_key,
    parse_parked_key,
    parse_sequence_key,
    parse_terminal_key,
    pending_key,
    rate_prefix,
    request_key,
    sequence_key,
    tenant_scope,
    terminal_key,
    user_scope,
)

RATE_WINDOW_S = 60
#: A slot whose job record never appeared (admission crashed half-way) is freed after this.
ABANDONED_SLOT_GRACE_S = 600
#: fail_stale re-sends a queued message that nobody picked up for this long; a duplicate
#: is harmless (the claim key drops it), a lost one would strand the job.
REQUEUE_AFTER_S = 300


@dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's admission limits; 0 means "no limit" for the optional ones."""

    max_active_per_user: int = 5
    max_active_per_tenant: int = 0
    rate_per_minute: int = 0
    cap_retry_after_s: int = 5


@dataclass(frozen=True, slots=True)
class NewJob:
    """What intake admits: validated request fields, no bytes."""

    tenant_id: str
    user_id: str
    workflow: dict[str, object]
    timeout_s: int
    inputs: list[InputSpec] = field(default_factory=list)
    webhook_url: str | None = None
    metadata: dict[str, object] = field(default_factory=dict)
    idempotency_key: str | None = None
    #: Fingerprint of the request body for idempotency; same key + other body = 409.
    body_hash: str = ""


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of a successful `create`: the job, and whether it is a replay."""

    job: Job
    replayed: bool


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a user's jobs, newest first; `next_cursor` None on the last page."""

    jobs: list[Job]
    next_cursor: str | None


@dataclass(slots=True)
class ReconcileReport:
    """What one reconciliation pass changed."""

    slots_released: int = 0
    active_removed: int = 0


def body_fingerprint(payload: object) -> str:
    """A stable hash of a JSON-able request body."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _dump(model: BaseModel) -> str:
    return model.model_dump_json()


class JobStore:
    """Domain operations on jobs over a backend; every method is safe to call concurrently."""

    def __init__(self, backend: Backend, clock: Callable[[], float]) -> None:
        self.jobs: KV = backend.kv(JOBS_DICT)
        self.admission: KV = backend.kv(ADMISSION_DICT)
        self.slots: KV = backend.kv(SLOTS_DICT)
        self.active: KV = backend.kv(ACTIVE_DICT)
        self.delayed: KV = backend.kv(DELAYED_DICT)
        self.deliveries: KV = backend.kv(DELIVERIES_DICT)
        self.pending: KV = backend.kv(PENDING_DICT)
        self.intakes: KV = backend.kv(INTAKE_DICT)
        self.dead: KV = backend.kv(DEAD_DICT)
        self.clock = clock

    # ---- admission -------------------------------------------------------------------

    def create(self, new: NewJob, job_id: str, limits: Limits) -> Admission:
        """Admit a job strictly under the caps, or replay the job its idempotency key made."""
        now = self.clock()
        idem = idem_key(new.tenant_id, new.idempotency_key) if new.idempotency_key else None
        if idem is not None:
            claim = json.dumps({"job_id": job_id, "body_hash": new.body_hash, "at": now})
            if not self.admission.put_if_absent(idem, claim):
                return self._replay(idem, new)
        try:
            self._check_rate(new.tenant_id, limits, now)
            slots = self._claim_slots(new, job_id, limits, now)
        except AdmissionRejected:
            if idem is not None:
                self.admission.pop(idem)  # ours alone: let the client retry the key
            raise
        job = Job(
            id=job_id,
            tenant_id=new.tenant_id,
            user_id=new.user_id,
            created_at=now,
            timeout_s=new.timeout_s,
            inputs=new.inputs,
            webhook_url=new.webhook_url,
            metadata=new.metadata,
            slots=slots,
            stage=Stage.FETCH,
            stage_times={Stage.FETCH: StageTimes(queued_at=now)},
        )
        self.jobs.put(request_key(job_id), json.dumps(new.workflow))
        self.jobs.put(job_key(job_id), _dump(job))
        self.active.put(active_key(job_id), json.dumps({"at": now}))
        claim_next(self.admission, index_prefix(new.tenant_id, new.user_id), job_id)
        return Admission(job=job, replayed=False)

    def _replay(self, idem: str, new: NewJob) -> Admission:
        raw = self.admission.get(idem)
        if raw is None:  # released by a rejected first attempt just now
            raise IdempotencyConflict("request with this idempotency key is in flight", None)
        first = json.loads(raw)
        if first["body_hash"] != new.body_hash:
            raise IdempotencyConflict(
                "idempotency key was already used with a different request body", first["job_id"]
            )
        job = self.find(first["job_id"])
        if job is None:
            raise IdempotencyConflict(
                "request with this idempotency key is in flight", first["job_id"]
            )
        return Admission(job=job, replayed=True)

    def _check_rate(self, tenant_id: str, limits: Limits, now: float) -> None:
        if limits.rate_per_minute <= 0:
            return
        window = int(now // RATE_WINDOW_S)
        taken = claim_next(
            self.admission, rate_prefix(tenant_id, window), "1", limit=limits.rate_per_minute
        )
        if taken is None:
            retry = max(1, math.ceil((window + 1) * RATE_WINDOW_S - now))
            raise AdmissionRejected(
                "rate_limited",
                f"tenant rate limit of {limits.rate_per_minute} requests per minute reached",
                retry,
                limits.rate_per_minute,
            )

    def _claim_slots(self, new: NewJob, job_id: str, limits: Limits, now: float) -> list[SlotRef]:
        holder = SlotHolder(job_id=job_id, claimed_at=now)
        user_slot = claim_slot(
            self.slots, user_scope(new.tenant_id, new.user_id), limits.max_active_per_user, holder
        )
        if user_slot is None:
            raise AdmissionRejected(
                "user_concurrency_limit",
                f"user already has {limits.max_active_per_user} active jobs",
                limits.cap_retry_after_s,
                limits.max_active_per_user,
            )
        if limits.max_active_per_tenant <= 0:
            return [user_slot]
        tenant_slot = claim_slot(
            self.slots, tenant_scope(new.tenant_id), limits.max_active_per_tenant, holder
        )
        if tenant_slot is None:
            release_slot(self.slots, user_slot)
            raise AdmissionRejected(
                "tenant_concurrency_limit",
                f"tenant already has {limits.max_active_per_tenant} active jobs",
                limits.cap_retry_after_s,
                limits.max_active_per_tenant,
            )
        return [user_slot, tenant_slot]

    # ---- reading ---------------------------------------------------------------------

    def find(self, job_id: str) -> Job | None:
        """The job with its terminal decision merged in, or None."""
        raw = self.jobs.get(job_key(job_id))
        if raw is None:
            return None
        job = Job.model_validate_json(raw)
        terminal = self.terminal(job_id)
        if terminal is None:
            return job
        # Only a completed job has outputs: a cancelled or failed one's were never kept.
        completed = terminal.status is JobStatus.COMPLETED
        outputs = (terminal.outputs or job.outputs) if completed else []
        return job.model_copy(
            update={
                "status": terminal.status,
                "finished_at": terminal.decided_at,
                "error": terminal.error,
                "outputs": outputs,
                "progress": 1.0 if completed else job.progress,
                "lease_until": None,
            }
        )

    def get(self, job_id: str) -> Job:
        """Like `find`, but raises `JobNotFound`."""
        job = self.find(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def terminal(self, job_id: str) -> TerminalDecision | None:
        """The terminal decision, if one was made."""
        raw = self.jobs.get(terminal_key(job_id))
        return None if raw is None else TerminalDecision.model_validate_json(raw)

    def workflow(self, job_id: str) -> dict[str, object]:
        """The job's workflow graph as submitted."""
        raw = self.jobs.get(request_key(job_id))
        if raw is None:
            raise JobNotFound(job_id)
        value: dict[str, object] = json.loads(raw)
        return value

    def list_for_user(
        self,
        tenant_id: str,
        user_id: str,
        limit: int = 20,
        cursor: str | None = None,
        status: JobStatus | None = None,
        max_scan: int = 500,
    ) -> Page:
        """A user's jobs newest first; reads only the index entries it returns (or skips)."""
        prefix = index_prefix(tenant_id, user_id)
        position = int(cursor) if cursor else sequence_end(self.admission, prefix)
        jobs: list[Job] = []
        scanned = 0
        while position > 0 and len(jobs) < limit and scanned < max_scan:
            position -= 1
            scanned += 1
            job_id = self.admission.get(sequence_key(prefix, position))
            job = self.find(job_id) if job_id else None
            if job is not None and (status is None or job.status is status):
                jobs.append(job)
        return Page(jobs=jobs, next_cursor=str(position) if position > 0 else None)

    # ---- terminal decisions ----------------------------------------------------------

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        error: JobError | None = None,
        outputs: list[OutputRef] | None = None,
    ) -> bool:
        """Decide the terminal state once; True if this call decided it (and freed the slots)."""
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            raise ValueError(f"{status} is not a terminal status")
        decision = TerminalDecision(
            status=status, decided_at=self.clock(), error=error, outputs=outputs or []
        )
        if not self.jobs.put_if_absent(terminal_key(job_id), _dump(decision)):
            return False
        self._release(job_id)
        return True

    def reject(self, job_id: str, tenant_id: str, user_id: str, error: JobError) -> bool:
        """Record a queued request that was not admitted as a failed job under its id.

        Never overwrites an existing job (a client reusing an id gets no second job).
        """
        now = self.clock()
        record = Job(
            id=job_id,
            tenant_id=tenant_id,
            user_id=user_id,
            created_at=now,
            timeout_s=0,
            stage=Stage.INTAKE,
        )
        if not self.jobs.put_if_absent(job_key(job_id), _dump(record)):
            return False
        claim_next(self.admission, index_prefix(tenant_id, user_id), job_id)
        return self.finish(job_id, JobStatus.FAILED, error=error)

    def cancel(self, job_id: str) -> Job:
        """Cancel now, whatever the stage; raises `AlreadyTerminal` if it had ended."""
        error = JobError(code="cancelled", message="cancelled by the client")
        if not self.finish(job_id, JobStatus.CANCELLED, error=error):
            raise AlreadyTerminal(self.get(job_id))
        return self.get(job_id)

    def _release(self, job_id: str) -> int:
        raw = self.jobs.get(job_key(job_id))
        freed = 0
        if raw is not None:
            for ref in Job.model_validate_json(raw).slots:
                freed += release_slot(self.slots, ref)
        self.active.pop(active_key(job_id))
        return freed

    # ---- stage hand-offs -------------------------------------------------------------

    def save(self, job: Job) -> None:
        """Write the record; only the job's current holder may call this."""
        self.jobs.put(job_key(job.id), _dump(job))

    def claim_stage(self, job_id: str, stage: Stage, epoch: int, attempt: int = 0) -> bool:
        """Take one stage message; False for a duplicate or a message of an older epoch."""
        if not self.is_current(job_id, epoch, _lane(stage)):
            return False
        return self.jobs.put_if_absent(claim_key(job_id, stage, epoch, attempt), str(self.clock()))

    def is_current(self, job_id: str, epoch: int, lane: str = "work") -> bool:
        """Whether a holder of `epoch` still holds the job (no newer epoch was handed out)."""
        return not self.jobs.contains(epoch_key(job_id, lane, epoch + 1))

    def renew_lease(self, job_id: str, stage: Stage, epoch: int, until: float) -> bool:
        """Extend the holder's lease to `until`; False (nothing written) if it was superseded.

        A renewal racing a `take_back` may still land, but it names the old epoch, and
        `lease_until` ignores a lease of any epoch but the job's.
        """
        if not self.is_current(job_id, epoch):
            return False
        lease = {"stage": stage.value, "epoch": epoch, "until": until}
        self.jobs.put(lease_key(job_id), json.dumps(lease))
        return True

    def lease_until(self, job: Job) -> float | None:
        """When the job's holder lease runs out, heartbeats included; None if nobody holds it."""
        if job.lease_until is None:
            return None
        raw = self.jobs.get(lease_key(job.id))
        if raw is None:
            return job.lease_until
        lease = json.loads(raw)
        if lease.get("epoch") != job.epoch or lease.get("stage") != job.stage.value:
            return job.lease_until  # an older holder's, or an earlier stage's
        return max(job.lease_until, float(lease["until"]))

    def take_back(self, job_id: str, epoch: int, lane: str = "work") -> int | None:
        """Hand a job whose holder (of `epoch`) went silent to a new epoch.

        None if another reaper already did. Work stages and webhook delivery have
        separate lanes, so re-sending a lost webhook never fences a work stage.
        """
        if not self.jobs.put_if_absent(epoch_key(job_id, lane, epoch + 1), str(self.clock())):
            return None
        return epoch + 1

    # ---- retention -------------------------------------------------------------------

    def ended_ids(self) -> Iterator[str]:
        """Ids of jobs with a terminal decision (cleanup's working set)."""
        return (parse_terminal_key(key) for key in self.jobs.keys(TERMINAL_PREFIX))

    def purge(self, job_id: str) -> int:
        """Remove every key the job owns, in every dict; returns how many were removed.

        Only for an ended job past its retention (the caller checks). The terminal
        decision goes last: it is how cleanup finds the job, so a purge cut short is
        finished by the next one.
        """
        removed = 0
        raw = self.jobs.get(job_key(job_id))
        if raw is not None:
            job = Job.model_validate_json(raw)
            removed += self._purge_admission(job)
            removed += self.dead.pop(dead_key(job.tenant_id, job_id)) is not None
            for ref in job.slots:
                removed += purge_slot(self.slots, ref)
        for prefix in job_owned_prefixes(job_id):
            for key in list(self.jobs.keys(prefix)):
                if parse_job_owned_key(key) == job_id:  # not a job whose id extends ours
                    removed += self.jobs.pop(key) is not None
        for key in list(self.delayed.keys()):
            if parse_parked_key(key).job_id == job_id:
                removed += self.delayed.pop(key) is not None
        for kv, key in (
            (self.deliveries, delivery_key(job_id)),
            (self.pending, pending_key(job_id)),
            (self.intakes, intake_key(job_id)),
            (self.active, active_key(job_id)),
            (self.jobs, lease_key(job_id)),
            (self.jobs, request_key(job_id)),
            (self.jobs, job_key(job_id)),
            (self.jobs, terminal_key(job_id)),
        ):
            removed += kv.pop(key) is not None
        return removed

    def _purge_admission(self, job: Job) -> int:
        """The job's entry in its user's index and the idempotency record naming it."""
        removed = 0
        prefix = index_prefix(job.tenant_id, job.user_id)
        for key in list(self.admission.keys(f"{prefix}:")):
            entry = parse_sequence_key(key)
            if entry is not None and entry[0] == prefix and self.admission.get(key) == job.id:
                removed += self.admission.pop(key) is not None
        for key in list(self.admission.keys(idem_prefix(job.tenant_id))):
            raw = self.admission.get(key)
            if raw is not None and json.loads(raw).get("job_id") == job.id:
                removed += self.admission.pop(key) is not None
        return removed

    # ---- reconciliation ----------------------------------------------------------------

    def active_ids(self) -> Iterator[str]:
        """Ids of jobs admitted and not yet released (the reaper's working set)."""
        return self.active.keys()

    def reconcile(self) -> ReconcileReport:
        """Free slots still held by terminal jobs or by admissions that never finished.

        A slot is released only if its holder is terminal (a terminal state never
        changes) or has no record long after claiming it; releases name one tenure, so
        racing the winner of a terminal decision is harmless.
        """
        report = ReconcileReport()
        now = self.clock()
        for job_id in list(self.active.keys()):
            if self.jobs.contains(terminal_key(job_id)):
                report.slots_released += self._release(job_id)
                report.active_removed += 1
        for ref, holder in list(held_slots(self.slots)):
            if self.jobs.contains(terminal_key(holder.job_id)) or (
                now - holder.claimed_at > ABANDONED_SLOT_GRACE_S
                and not self.jobs.contains(job_key(holder.job_id))
            ):
                report.slots_released += release_slot(self.slots, ref)
        return report


def _lane(stage: Stage) -> str:
    return "notify" if stage is Stage.NOTIFY else "work"
