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
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from pydantic import BaseModel

from app.core.errors import (
    AdmissionRejected,
    AlreadyTerminal,
    IdempotencyConflict,
    JobIdTaken,
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
    TemplateRef,
    TerminalDecision,
)
from app.store.backends.base import KV, Backend, can_read_many, get_all, put_all
from app.store.claims import (
    SlotHints,
    SlotHolder,
    claim_next_from,
    give_back_if_purged,
    mark_released,
    note_released,
    purge_slot,
    read_hints,
    release_held_by,
    release_marker,
    release_slot,
    sequence_end,
    sequence_start,
    take_checked,
    take_place,
)
from app.store.keys import (
    ACTIVE_DICT,
    ADMISSION_DICT,
    DEAD_DICT,
    DELAYED_DICT,
    DELIVERIES_DICT,
    IDEM_DICT,
    INTAKE_DICT,
    JOBS_DICT,
    PENDING_DICT,
    RATES_DICT,
    RETENTION_BUCKET_S,
    SLOTS_DICT,
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
    lease_key,
    parse_parked_key,
    parse_sequence_key,
    pending_key,
    rate_prefix,
    request_key,
    retention_bucket,
    sequence_key,
    slot_hints_key,
    tenant_scope,
    terminal_key,
    user_scope,
)
from app.store.parallel import both, in_background, is_concurrent, run_calls
from app.store.retention import RetentionIndex

RATE_WINDOW_S = 60
#: Prefetched requests one store keeps at most (each is read by its stage at once).
PREFETCH_MAX = 64
#: A slot whose job record never appeared (admission crashed half-way) is freed after this.
ABANDONED_SLOT_GRACE_S = 600
#: fail_stale re-sends a queued message that nobody picked up for this long; a duplicate
#: is harmless (the claim key drops it), a lost one would strand the job.
REQUEUE_AFTER_S = 300
#: Striped by tenant: admissions of one tenant take turns in a process (see `create`).
_ADMITTING = tuple(threading.Lock() for _ in range(32))


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
    webhook_events: list[str] = field(default_factory=list)
    metadata: dict[str, object] = field(default_factory=dict)
    idempotency_key: str | None = None
    #: Fingerprint of the request body for idempotency; same key + other body = 409.
    body_hash: str = ""
    #: The template the workflow was resolved from, if any.
    template: TemplateRef | None = None
    #: Jobs ahead in the render queue, as admission last read it (None: not read).
    queue_position: int | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of a successful `create`: the job, and whether it is a replay."""

    job: Job
    replayed: bool
    #: The stored request (JSON), for the first hand-off to carry; None on a replay.
    request: str | None = None


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


def slot_hint_trust_s(job_retention_s: float) -> float:
    """How long a slot hint spares the floor read, for jobs kept `job_retention_s`.

    A tenure is purged only with its job, once the job ended a retention ago and the
    retention hour its release was indexed under is over (`purge_due`): at least the
    retention less one hour after the release. Half of that leaves room for slow
    releases and clocks; below an hour of retention, no hint is trusted.
    """
    return max(0.0, (job_retention_s - RETENTION_BUCKET_S) / 2)


def body_fingerprint(payload: object) -> str:
    """A stable hash of a JSON-able request body."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _dump(model: BaseModel) -> str:
    return model.model_dump_json()


class JobStore:
    """Domain operations on jobs over a backend; every method is safe to call concurrently."""

    def __init__(
        self, backend: Backend, clock: Callable[[], float], *, hint_trust_s: float = 0.0
    ) -> None:
        self.jobs: KV = backend.kv(JOBS_DICT)
        self.admission: KV = backend.kv(ADMISSION_DICT)
        self.idem: KV = backend.kv(IDEM_DICT)
        self.rates: KV = backend.kv(RATES_DICT)
        self.retention = RetentionIndex(backend)
        self.slots: KV = backend.kv(SLOTS_DICT)
        self.active: KV = backend.kv(ACTIVE_DICT)
        self.delayed: KV = backend.kv(DELAYED_DICT)
        self.deliveries: KV = backend.kv(DELIVERIES_DICT)
        self.pending: KV = backend.kv(PENDING_DICT)
        self.intakes: KV = backend.kv(INTAKE_DICT)
        self.dead: KV = backend.kv(DEAD_DICT)
        self.clock = clock
        #: How long a slot hint is trusted to spare the floor read (`claims`, "Trusted
        #: hints"): less than the least time from a release to its purge. 0: never.
        self.hint_trust_s = hint_trust_s
        self._concurrent = is_concurrent(backend)
        #: Requests read alongside a stage claim, by job id, until the stage reads them.
        self._prefetched: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def concurrent(self) -> bool:
        """Whether independent calls on this store are worth running at once."""
        return self._concurrent

    # ---- admission -------------------------------------------------------------------

    def create(
        self, new: NewJob, job_id: str, limits: Limits, *, id_from_client: bool = False
    ) -> Admission:
        """Admit a job strictly under the caps, or replay the job its idempotency key made.

        Only what must be decided in order is: the rate ticket and the user's slot, then
        the tenant's slot (a tenant slot held by a request its user's cap refuses could
        refuse another user's request that fits; see `_claim_slots`). Everything else
        overlaps on a backend whose calls are round trips: the idempotency claim with
        every hint read and the job's active-index entry, each floor check with the next
        claim, and the writes of an admitted job with each other.

        The active entry (`_Owned`: when admission began, the scopes it claims in) is
        written before any place is won, so an admission that dies half-way is found by
        `reconcile` there, never by scanning every slot tenure; what the job owns beyond
        its id (idempotency record, index position) rides in its record, for its purge.

        Raises `JobIdTaken` if a job under a client-chosen `job_id` exists (that record is
        written with put-if-absent); what this call had taken is given back first. An id
        we made ourselves is unguessable and new, so its record goes out in the one batch.
        """
        if self._concurrent:
            return self._create(new, job_id, limits, id_from_client)
        # Calls in order (local backends): one admission per tenant at a time in this
        # process. Threads admitting at once all read the same hint record and probed
        # each other's new places: at 64 connections one POST made ~170 SQLite
        # statements (issue 13). In turn, each reads the hints the last one wrote; the
        # caps stay enforced by put-if-absent alone (other processes still race).
        with _ADMITTING[hash(new.tenant_id) % len(_ADMITTING)]:
            return self._create(new, job_id, limits, id_from_client)

    def _create(self, new: NewJob, job_id: str, limits: Limits, id_from_client: bool) -> Admission:
        now = self.clock()
        par = self._concurrent
        idem = (
            idem_key(new.tenant_id, new.user_id, new.idempotency_key)
            if new.idempotency_key
            else None
        )
        claim = json.dumps({"job_id": job_id, "body_hash": new.body_hash, "at": now})
        user = user_scope(new.tenant_id, new.user_id)
        tenant = tenant_scope(new.tenant_id) if limits.max_active_per_tenant > 0 else None
        rate = (
            rate_prefix(new.tenant_id, int(now // RATE_WINDOW_S))
            if limits.rate_per_minute > 0
            else None
        )
        index = index_prefix(new.tenant_id, new.user_id)
        # The tenant's record also holds its rate window's hint, the user's its index hint.
        scope_of_rate = tenant_scope(new.tenant_id) if tenant or rate else None
        owned = _Owned(at=now, scopes=_scopes(new, limits))
        # Put-if-absent, so a failed admission pops only an entry it wrote (never that
        # of a job already under this id).
        won, user_hints, tenant_hints, listed = run_calls(
            par,
            lambda: True if idem is None else self.idem.put_if_absent(idem, claim),
            lambda: self._hints(user),
            lambda: None if scope_of_rate is None else self._hints(scope_of_rate),
            lambda: self.active.put_if_absent(active_key(job_id), owned.dumps()),
        )
        if not won:
            if listed:
                self.active.pop(active_key(job_id))
            return self._replay(str(idem), new)
        user_hints = cast(SlotHints, user_hints)
        index_start = self._index_start(index, user_hints)
        rate_start = 0
        if rate is not None and isinstance(tenant_hints, SlotHints):
            rate_start = tenant_hints.seq.get(rate, 0)
        holder = SlotHolder(job_id=job_id, claimed_at=now)
        try:
            ticket, slots = self._claim_slots(
                holder, limits, user, user_hints, tenant, tenant_hints, rate, rate_start, now
            )
        except AdmissionRejected:
            # The idempotency record is ours alone: let the client retry the key.
            self._unlist(job_id, idem, bool(listed))
            raise
        stage = first_stage(new)
        job = Job(
            id=job_id,
            tenant_id=new.tenant_id,
            user_id=new.user_id,
            created_at=now,
            timeout_s=new.timeout_s,
            inputs=new.inputs,
            webhook_url=new.webhook_url,
            webhook_events=new.webhook_events,
            metadata=new.metadata,
            slots=slots,
            stage=stage,
            stage_times={stage: StageTimes(queued_at=now)},
            template=new.template,
            queue_position=new.queue_position,
            # The index position assumes the first probe wins, like the hint; a loser
            # writes its record again (rare: concurrent admissions of one user).
            index_position=index_start,
            idempotency_record=idem,
        )
        # Search hints only speed up the next search, so they go out with the rest; the
        # index hint assumes the first probe wins (a loser's hint is low: extra probes).
        user_hints.seq[index] = index_start + 1
        slot_hints = {slot_hints_key(user): user_hints.dumps()}
        if scope_of_rate is not None and isinstance(tenant_hints, SlotHints):
            if rate is not None:  # only the current window's hint is worth keeping
                tenant_hints.seq = {rate: ticket + 1}
            slot_hints[slot_hints_key(scope_of_rate)] = tenant_hints.dumps()
        claimed: list[int] = []
        request = json.dumps(new.workflow)

        def claim_index() -> int | None:
            n = claim_next_from(self.admission, index, job_id, index_start)
            claimed.extend(() if n is None else (n,))
            return n

        def write_hints() -> None:
            if claimed:
                # A backend that keeps its calls in order has claimed by now: the hint
                # names the real next number (one that assumed the first probe won made
                # every concurrent admission of the user probe past its peers' wins).
                user_hints.seq[index] = claimed[0] + 1
                slot_hints[slot_hints_key(user)] = user_hints.dumps()
            put_all(self.slots, slot_hints)

        if not id_from_client:
            # An id we made is new by construction: every write goes out in one group.
            _, position, _ = run_calls(
                par,
                lambda: put_all(
                    self.jobs,
                    {request_key(job_id): request, job_key(job_id): _dump(job)},
                ),
                claim_index,
                (lambda: put_all(self.slots, slot_hints)) if par else write_hints,
            )
            placed = self._placed(job, cast(int, position))
            return Admission(job=placed, replayed=False, request=request)
        # A client chose the id (the intake queue): put-if-absent, so two messages racing
        # with one new id cannot both create. The request and the index entry go out
        # after, so a loser never replaces the winner's workflow nor lists its job.
        # (In order, the hints wait for the index claim, as above.)
        created, *_ = run_calls(
            par,
            lambda: self.jobs.put_if_absent(job_key(job_id), _dump(job)),
            *((lambda: put_all(self.slots, slot_hints)),) if par else (),
        )
        if not created:
            if not par:
                put_all(self.slots, slot_hints)
            for ref in slots:
                release_slot(self.slots, ref)
            self._unlist(job_id, idem, bool(listed))  # as for a rejection
            raise JobIdTaken(job_id)
        _, position, *_ = run_calls(
            par,
            lambda: self.jobs.put(request_key(job_id), request),
            claim_index,
            *(() if par else (write_hints,)),
        )
        placed = self._placed(job, cast(int, position))
        return Admission(job=placed, replayed=False, request=request)

    def _placed(self, job: Job, position: int) -> Job:
        """The admitted record with its real index position, rewritten if the first
        probe lost (before any stage message exists, so admission is still its writer)."""
        if position == job.index_position:
            return job
        job = job.model_copy(update={"index_position": position})
        self.save(job)
        return job

    def _unlist(self, job_id: str, idem: str | None, listed: bool) -> None:
        """Undo a failed admission's idempotency claim and active entry (at once)."""
        run_calls(
            self._concurrent,
            lambda: None if idem is None else self.idem.pop(idem),
            lambda: self.active.pop(active_key(job_id)) if listed else None,
        )

    def _index_start(self, index: str, hints: SlotHints) -> int:
        """Where the search for a user's next index number starts: the hint in the user's
        slot-hint record, or (a record written before it carried one) the old hint key."""
        if index in hints.seq or not hints.found:
            return hints.seq.get(index, 0)
        return sequence_start(self.admission, index)

    def _replay(self, idem: str, new: NewJob) -> Admission:
        raw = self.idem.get(idem)
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

    def _take_ticket(self, rate: str | None, limits: Limits, start: int) -> int | None:
        """A ticket of this window's rate limit (its number; 0 without a limit), or None."""
        if rate is None:
            return 0
        return claim_next_from(self.rates, rate, "1", start, limit=limits.rate_per_minute)

    def _claim_slots(
        self,
        holder: SlotHolder,
        limits: Limits,
        user: str,
        user_hints: SlotHints,
        tenant: str | None,
        tenant_hints: object,
        rate: str | None,
        rate_start: int,
        now: float,
    ) -> tuple[int, list[SlotRef]]:
        """The rate ticket with the user's slot, then the tenant's slot; each floor check
        overlaps the next step. Returns the ticket number and the slots.

        The ticket and the user's slot race each other only: a slot taken by a request
        the rate limit refuses is given back at once (at worst a same-user request sees
        it held for that moment: a refusal, never an admission over a cap). The tenant
        slot waits for the user's, so a request its user's cap refuses never holds a
        tenant place another user's request could have had. No job is admitted before
        both floor checks said its tenures are real; a tenure that proved purged (see
        `app.store.claims`) is retaken on the slow path.
        """
        user_cap = limits.max_active_per_user
        ticket, user_slot = both(
            self._concurrent,
            lambda: self._take_ticket(rate, limits, rate_start),
            lambda: take_place(self.slots, user, user_cap, holder, user_hints),
        )
        if ticket is None:
            if user_slot is not None and not self._purged(user_slot, user_hints):
                release_slot(self.slots, user_slot)
            window = int(now // RATE_WINDOW_S)
            raise AdmissionRejected(
                "rate_limited",
                f"tenant rate limit of {limits.rate_per_minute} requests per minute reached",
                max(1, math.ceil((window + 1) * RATE_WINDOW_S - now)),
                limits.rate_per_minute,
            )
        if user_slot is None:
            raise _refusal("user", limits)
        return ticket, self._tenant_slot(
            holder, limits, user, user_slot, user_hints, tenant, tenant_hints
        )

    def _tenant_slot(
        self,
        holder: SlotHolder,
        limits: Limits,
        user: str,
        user_slot: SlotRef,
        user_hints: SlotHints,
        tenant: str | None,
        tenant_hints: object,
    ) -> list[SlotRef]:
        """The tenant's slot after the user's (floor check of the user's alongside)."""
        tenant_cap = limits.max_active_per_tenant
        if tenant is None or not isinstance(tenant_hints, SlotHints):
            if self._purged(user_slot, user_hints):
                user_slot = self._retake("user", limits, holder, user, user_hints, None)
            return [user_slot]
        won = user_slot
        user_purged, tenant_slot = both(
            self._concurrent,
            lambda: self._purged(won, user_hints),
            lambda: take_place(self.slots, tenant, tenant_cap, holder, tenant_hints),
        )
        if tenant_slot is None:
            if not user_purged:
                release_slot(self.slots, user_slot)
            raise _refusal("tenant", limits)
        if self._purged(tenant_slot, tenant_hints):
            other = None if user_purged else user_slot
            tenant_slot = self._retake("tenant", limits, holder, tenant, tenant_hints, other)
        if user_purged:
            user_slot = self._retake("user", limits, holder, user, user_hints, tenant_slot)
        return [user_slot, tenant_slot]

    def _hints(self, scope: str) -> SlotHints:
        """A scope's slot hints, stamped on write where this store trusts stamps."""
        return read_hints(self.slots, scope, stamped=self.hint_trust_s > 0)

    def _purged(self, ref: SlotRef, hints: SlotHints) -> bool:
        """`give_back_if_purged` with this store's hint trust (no read for a fresh hint)."""
        return give_back_if_purged(self.slots, ref, hints, self.clock(), self.hint_trust_s)

    def _retake(
        self,
        kind: str,
        limits: Limits,
        holder: SlotHolder,
        scope: str,
        hints: SlotHints,
        other: SlotRef | None,
    ) -> SlotRef:
        """A place again after a won tenure proved purged (slow, sequential, rare)."""
        cap = limits.max_active_per_user if kind == "user" else limits.max_active_per_tenant
        ref = take_checked(self.slots, scope, cap, holder, hints)
        if ref is None:
            if other is not None:
                release_slot(self.slots, other)
            raise _refusal(kind, limits)
        return ref

    # ---- reading ---------------------------------------------------------------------

    def find(self, job_id: str) -> Job | None:
        """The job with its terminal decision merged in, or None."""
        raw, decided = both(
            self._concurrent,
            lambda: self.jobs.get(job_key(job_id)),
            lambda: self.jobs.get(terminal_key(job_id)),
        )
        return _merged(raw, decided)

    def find_and_claim(
        self,
        job_id: str,
        stage: Stage,
        epoch: int,
        attempt: int,
        *,
        prefetch_workflow: bool = False,
        carried: Job | None = None,
        carried_request: str | None = None,
    ) -> tuple[Job | None, bool]:
        """`find` and `claim_stage` for a stage message, overlapped where calls are round
        trips (a claim taken for a job that turns out ended or unknown blocks nothing).

        `prefetch_workflow` reads the request alongside, for the stage's `workflow` call.
        `carried`: the record as its sender wrote it, from the message (the single-writer
        rule: nobody writes it between the hand-off and this claim), so it is not read
        again; only the terminal decision is. `carried_request` likewise for the request.
        """
        if carried is not None and carried.id != job_id:
            carried = None
        if carried_request is not None:
            prefetch_workflow = False
        if not self._concurrent:
            if carried is None:
                job = self.find(job_id)
            else:
                job = _merge(carried, self.jobs.get(terminal_key(job_id)))
            if job is None or job.is_terminal:
                return job, False
            claimed = self.claim_stage(job_id, stage, epoch, attempt)
            if claimed and carried_request is not None:
                self._keep_request(job_id, carried_request)
            return job, claimed
        known = carried
        raw, decided, fenced, won, request = run_calls(
            True,
            lambda: None if known is not None else self.jobs.get(job_key(job_id)),
            lambda: self.jobs.get(terminal_key(job_id)),
            lambda: self.jobs.contains(epoch_key(job_id, _lane(stage), epoch + 1)),
            lambda: self.jobs.put_if_absent(
                claim_key(job_id, stage, epoch, attempt), str(self.clock())
            ),
            lambda: self.jobs.get(request_key(job_id)) if prefetch_workflow else None,
        )
        decision = None if decided is None else str(decided)
        found = (
            _merge(known, decision)
            if known is not None
            else _merged(None if raw is None else str(raw), decision)
        )
        claimed = bool(won) and not fenced
        request = carried_request if carried_request is not None else request
        if claimed and found is not None and not found.is_terminal and request is not None:
            self._keep_request(job_id, str(request))
        return found, claimed

    def _keep_request(self, job_id: str, request: str) -> None:
        """Hold a request read (or carried) with a stage claim until the stage reads it."""
        with self._lock:
            if len(self._prefetched) >= PREFETCH_MAX:  # stages that never read theirs
                self._prefetched.clear()
            self._prefetched[job_id] = request

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

    def terminals(self, job_ids: list[str]) -> list[TerminalDecision | None]:
        """`terminal` of several jobs, in order, in one read where the dict offers it."""
        raws = self._read(self.jobs, [terminal_key(job_id) for job_id in job_ids])
        return [None if raw is None else TerminalDecision.model_validate_json(raw) for raw in raws]

    def workflow(self, job_id: str) -> dict[str, object]:
        """The job's workflow graph as submitted (read once: see `find_and_claim`)."""
        with self._lock:
            raw = self._prefetched.pop(job_id, None)
        if raw is None:
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
        """A user's jobs newest first; reads only the index entries it returns (or skips).

        A page's entries are read in one batch and their records and decisions in a
        second (one query each on SQLite, overlapped gets on Modal), not three reads per
        job; with a `status` filter each further batch asks only for what is missing.
        """
        prefix = index_prefix(tenant_id, user_id)
        if cursor:
            position = int(cursor)
        else:
            hints = self._hints(user_scope(tenant_id, user_id))
            position = sequence_end(self.admission, prefix, self._index_start(prefix, hints))
        jobs: list[Job] = []
        scanned = 0
        while position > 0 and len(jobs) < limit and scanned < max_scan:
            size = min(limit - len(jobs), position, max_scan - scanned)
            positions = range(position - 1, position - 1 - size, -1)
            ids = self._read(self.admission, [sequence_key(prefix, n) for n in positions])
            listed = [job_id for job_id in ids if job_id]
            records = self._read(
                self.jobs, [job_key(i) for i in listed] + [terminal_key(i) for i in listed]
            )
            found = {
                job_id: _merged(raw, decided)
                for job_id, raw, decided in zip(
                    listed, records[: len(listed)], records[len(listed) :], strict=True
                )
            }
            for n, job_id in zip(positions, ids, strict=True):
                position, scanned = n, scanned + 1
                job = found.get(job_id) if job_id else None
                if job is not None and (status is None or job.status is status):
                    jobs.append(job)
                    if len(jobs) == limit:
                        break
        return Page(jobs=jobs, next_cursor=str(position) if position > 0 else None)

    def _read(self, kv: KV, keys: list[str]) -> list[str | None]:
        """Several keys of one dict: one query where it has one, else gets at once."""
        if len(keys) < 2 or can_read_many(kv) or not self._concurrent:
            return get_all(kv, keys)
        values = run_calls(True, *(lambda key=key: kv.get(key) for key in keys))
        return [None if value is None else str(value) for value in values]

    # ---- terminal decisions ----------------------------------------------------------

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        error: JobError | None = None,
        outputs: list[OutputRef] | None = None,
        slots: list[SlotRef] | None = None,
    ) -> bool:
        """Decide the terminal state once; True if this call decided it (and freed the slots).

        `slots`: the job's slots when the caller holds its record (saves reading it again).
        """
        if status not in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            raise ValueError(f"{status} is not a terminal status")
        decision = TerminalDecision(
            status=status, decided_at=self.clock(), error=error, outputs=outputs or []
        )
        if not self.jobs.put_if_absent(terminal_key(job_id), _dump(decision)):
            return False
        self._release(job_id, slots=slots)
        return True

    def complete(self, job: Job) -> bool:
        """Decide `completed` with the last stage's outputs and stage times; True if decided.

        One write: the decision carries what a last save of the record would have (reads
        merge it over the record), so the last stage never rewrites `job:{id}`.
        """
        decision = TerminalDecision(
            status=JobStatus.COMPLETED,
            decided_at=self.clock(),
            outputs=job.outputs,
            stage_times=job.stage_times,
        )
        decided = self.jobs.put_if_absent(terminal_key(job.id), _dump(decision))
        if decided:
            self._release(job.id, job=job)
        return decided

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
        index = self._index(tenant_id, user_id, job_id)
        # Its index position goes to retention with it (via `_release`), so its purge
        # deletes the entry by key.
        self.active.put(active_key(job_id), _Owned(at=now, index=index).dumps())
        return self.finish(job_id, JobStatus.FAILED, error=error)

    def _index(self, tenant_id: str, user_id: str, job_id: str) -> int:
        """Add a job to its user's index (the slow way: a refused queued request)."""
        scope, prefix = user_scope(tenant_id, user_id), index_prefix(tenant_id, user_id)
        hints = self._hints(scope)
        position = int(
            claim_next_from(self.admission, prefix, job_id, self._index_start(prefix, hints)) or 0
        )
        hints.seq[prefix] = position + 1
        self.slots.put(slot_hints_key(scope), hints.dumps())
        return position

    def cancel(self, job_id: str) -> Job:
        """Cancel now, whatever the stage; raises `AlreadyTerminal` if it had ended."""
        error = JobError(code="cancelled", message="cancelled by the client")
        if not self.finish(job_id, JobStatus.CANCELLED, error=error):
            raise AlreadyTerminal(self.get(job_id))
        return self.get(job_id)

    def _release(
        self,
        job_id: str,
        slots: list[SlotRef] | None = None,
        job: Job | None = None,
        *,
        decided_here: bool = True,
    ) -> int:
        """After the terminal decision: free the slots, index the job for retention, and
        leave the reaper's working set, in that order (reconcile redoes a cut-short one:
        the job stays in the active index until the retention entry is written).

        `job`: the record, when the caller holds it (its slots and what it owns need no
        read); `slots` alone still needs the active entry for the retention entry.

        `decided_here`: the caller just made the terminal decision, so it is the tenures'
        one releaser: their markers go out in the hint batch as plain writes (a marker is
        idempotent; only a second releaser, reconcile, needs to learn whether it freed
        one). Reconcile passes False: each marker is put-if-absent and counted.
        """
        if job is None and slots is None:
            raw = self.jobs.get(job_key(job_id))
            job = None if raw is None else Job.model_validate_json(raw)
        if slots is None:
            slots = [] if job is None else job.slots
        # A record admitted before it carried its index position (or a refused queued
        # request's) leaves what it owns in the active entry: read it there.
        owned = _Owned.of(job)
        par = self._concurrent
        now = self.clock()  # before any marker: the freed places' hints are stamped with it
        # Hint reads and the active entry at once (and, for reconcile, each marker); then
        # the markers with the freed places' hints in one batch (a hint is only a search
        # aid: a stale one costs probes, not slots) alongside the retention entry; then
        # leaving the active index.
        marked = [] if decided_here else slots
        entry_raw, *results = run_calls(
            par,
            lambda: None if owned is not None else self.active.get(active_key(job_id)),
            *(lambda ref=ref: self._hints(ref.scope) for ref in slots),
            *(lambda ref=ref: mark_released(self.slots, ref) for ref in marked),
        )
        freed = [True] * len(slots) if decided_here else results[len(slots) :]
        updates: dict[str, str] = {}
        for ref, was_freed, hints in zip(slots, freed, results[: len(slots)], strict=True):
            if decided_here:
                marker, value = release_marker(ref)
                updates[marker] = value
            if was_freed and isinstance(hints, SlotHints):
                note_released(hints, ref, at=now)
                updates[slot_hints_key(ref.scope)] = hints.dumps()
        if owned is None:
            owned = _Owned.loads(None if entry_raw is None else str(entry_raw))
        ended = owned
        run_calls(
            par,
            lambda: put_all(self.slots, updates) if updates else None,
            lambda: self.retention.add(job_id, ended.idem, ended.index, now),
        )
        self.active.pop(active_key(job_id))
        return sum(1 for was_freed in freed if was_freed)

    # ---- stage hand-offs -------------------------------------------------------------

    def save(self, job: Job) -> None:
        """Write the record; only the job's current holder may call this."""
        self.jobs.put(job_key(job.id), _dump(job))

    def save_in_background(self, job: Job) -> Callable[[], None]:
        """Start `save(job)` and return the wait for it (which raises what it raised).

        Where calls are round trips the write overlaps the caller's next steps; locally
        it is done before this returns. The caller must wait before writing again.
        """
        return in_background(self._concurrent, lambda: self.save(job))

    def claim_stage(self, job_id: str, stage: Stage, epoch: int, attempt: int = 0) -> bool:
        """Take one stage message; False for a duplicate or a message of an older epoch.

        The fence read and the claim overlap: a fenced message's claim key names its own
        (old) epoch, so taking it blocks no one, and the job's purge removes it.
        """
        current, won = both(
            self._concurrent,
            lambda: self.is_current(job_id, epoch, _lane(stage)),
            lambda: self.jobs.put_if_absent(
                claim_key(job_id, stage, epoch, attempt), str(self.clock())
            ),
        )
        return current and won

    def claimed_at(self, job_id: str, stage: Stage, epoch: int, attempt: int = 0) -> float | None:
        """When a worker took the message (`epoch`, `attempt`) of `stage`; None if none did."""
        raw = self.jobs.get(claim_key(job_id, stage, epoch, attempt))
        return float(raw) if raw is not None else None

    def holder_state(self, job_id: str, epoch: int, *, cancelled: bool) -> tuple[bool, bool]:
        """`(is_current, has a terminal decision)` for a work-stage holder, read at once;
        the second is only read if `cancelled` asks for it (else False)."""
        current, decided = both(
            self._concurrent,
            lambda: self.is_current(job_id, epoch),
            lambda: cancelled and self.jobs.contains(terminal_key(job_id)),
        )
        return current, decided

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

    def purge_due(self, cutoff: float, limit: int | None = None) -> int:
        """Purge every job that ended at or before `cutoff` (at most `limit`); returns
        how many. A run stopped by `limit` keeps the cursor on its hour: the next run
        resumes there (entries already purged are gone from the index).

        Walks the retention index hour by hour from its cursor to `cutoff`'s hour, so a
        run costs the jobs now due plus a few calls per hour, whatever the history. Hours
        wholly before the cutoff are emptied and passed; the cutoff's own hour keeps its
        jobs not yet due for the next run. One cleanup runs at a time (like `purge_slot`).
        """
        bucket = self.retention.cursor()
        if bucket is None:
            return 0  # no job has ever ended
        last = retention_bucket(cutoff)
        purged = 0
        while bucket <= last:
            kept = False
            for entry in self.retention.entries(bucket):
                if limit is not None and purged >= limit:
                    return purged
                terminal = self.terminal(entry.job_id)
                if terminal is not None and terminal.decided_at > cutoff:
                    kept = True
                    continue
                if terminal is not None or self.jobs.contains(job_key(entry.job_id)):
                    self.purge(entry.job_id, _Owned.from_entry(entry.idem, entry.index))
                    purged += 1
                entry.remove()
            if kept or bucket == last:
                break  # this hour is not over for cleanup yet
            self.retention.finish(bucket)
            bucket += 1
        return purged

    def purge(self, job_id: str, owned: _Owned | None = None) -> int:
        """Remove every key the job owns, in every dict; returns how many were removed.

        Only for an ended job past its retention (the caller checks). `owned` (from the
        retention index) names its index entry and idempotency record; without it they
        are found by scanning. The terminal decision goes last, so a purge cut short is
        finished by the next one.
        """
        removed = 0
        raw = self.jobs.get(job_key(job_id))
        if raw is not None:
            job = Job.model_validate_json(raw)
            removed += self._purge_admission(job, owned)
            removed += self.dead.pop(dead_key(job.tenant_id, job_id)) is not None
            for ref in job.slots:
                removed += purge_slot(self.slots, ref)
        removed += self._purge_stage_records(job_id)
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

    def _purge_stage_records(self, job_id: str) -> int:
        """The job's stage claims and fencing epochs, by key: per lane, epochs count up
        from 1 and each stage's attempts from 0 without gaps, so probing to the first
        missing key finds them all."""
        removed = 0
        for lane, stages in _LANES:
            top = 0
            while self.jobs.pop(epoch_key(job_id, lane, top + 1)) is not None:
                top += 1
                removed += 1
            for epoch in range(top + 1):
                for stage in stages:
                    attempt = 0
                    while self.jobs.pop(claim_key(job_id, stage, epoch, attempt)) is not None:
                        attempt += 1
                        removed += 1
        return removed

    def _purge_admission(self, job: Job, owned: _Owned | None) -> int:
        """The job's entry in its user's index and the idempotency record naming it."""
        removed = 0
        prefix = index_prefix(job.tenant_id, job.user_id)
        if owned is not None and owned.index is not None:
            key = sequence_key(prefix, owned.index)
            if self.admission.get(key) == job.id:
                removed += self.admission.pop(key) is not None
            if owned.idem is not None:
                raw = self.idem.get(owned.idem)
                if raw is not None and json.loads(raw).get("job_id") == job.id:
                    removed += self.idem.pop(owned.idem) is not None
            return removed
        for key in list(self.admission.keys(f"{prefix}:")):
            entry = parse_sequence_key(key)
            if entry is not None and entry[0] == prefix and self.admission.get(key) == job.id:
                removed += self.admission.pop(key) is not None
        for key in list(self.idem.keys(idem_prefix(job.tenant_id))):
            raw = self.idem.get(key)
            if raw is not None and json.loads(raw).get("job_id") == job.id:
                removed += self.idem.pop(key) is not None
        return removed

    # ---- reconciliation ----------------------------------------------------------------

    def active_ids(self) -> Iterator[str]:
        """Ids of jobs admitted and not yet released (the reaper's working set)."""
        return self.active.keys()

    def reconcile(self) -> ReconcileReport:
        """Free slots still held by terminal jobs or by admissions that never finished.

        Walks only the active index (every unreleased slot's job is in it: admission
        adds the job before winning a place, `_release` removes it last), so its cost
        follows the jobs in flight, not the history. A slot is released only if its
        holder is terminal (a terminal state never changes) or has no record long after
        admission began; releases name one tenure, so racing a terminal decision is
        harmless.
        """
        report = ReconcileReport()
        now = self.clock()
        for job_id in list(self.active.keys()):
            if self.jobs.contains(terminal_key(job_id)):
                report.slots_released += self._release(job_id, decided_here=False)
                report.active_removed += 1
                continue
            owned = _Owned.loads(self.active.get(active_key(job_id)))
            if now - owned.at > ABANDONED_SLOT_GRACE_S and not self.jobs.contains(job_key(job_id)):
                for scope, cap in owned.scopes.items():
                    report.slots_released += release_held_by(self.slots, scope, cap, job_id)
                self.active.pop(active_key(job_id))
                report.active_removed += 1
        return report


#: The fencing lanes and the stages that claim messages in each.
_LANES: tuple[tuple[str, tuple[Stage, ...]], ...] = (
    ("work", (Stage.FETCH, Stage.RENDER, Stage.UPLOAD)),
    ("notify", (Stage.NOTIFY,)),
)


@dataclass(slots=True)
class _Owned:
    """A job's active-index entry: when admission began and the slot scopes it claims in
    (with their caps); and the keys it owns beyond its id (idempotency, index position),
    which the retention entry carries (from the job record; older entries carry them)."""

    at: float = 0.0
    idem: str | None = None
    index: int | None = None
    scopes: dict[str, int] = field(default_factory=dict)

    def dumps(self) -> str:
        payload = {"at": self.at, "idem": self.idem, "index": self.index, "scopes": self.scopes}
        return json.dumps(payload, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | None) -> _Owned:
        if raw is None:
            return cls()
        data = json.loads(raw)
        return cls(
            at=float(data.get("at", 0.0)),
            idem=data.get("idem"),
            index=data.get("index"),
            scopes={str(k): int(v) for k, v in (data.get("scopes") or {}).items()},
        )

    @classmethod
    def of(cls, job: Job | None) -> _Owned | None:
        """What a record says it owns; None if it does not say (see `_release`)."""
        if job is None or job.index_position is None:
            return None
        return cls(idem=job.idempotency_record, index=job.index_position)

    @classmethod
    def from_entry(cls, idem: str | None, index: int | None) -> _Owned | None:
        """What a retention entry says the job owns; None when it does not know its index
        position (the purge then scans for the index entry and the idempotency record)."""
        return None if index is None else cls(idem=idem, index=index)


def _scopes(new: NewJob, limits: Limits) -> dict[str, int]:
    """The slot scopes an admission claims in, with their caps."""
    scopes = {user_scope(new.tenant_id, new.user_id): limits.max_active_per_user}
    if limits.max_active_per_tenant > 0:
        scopes[tenant_scope(new.tenant_id)] = limits.max_active_per_tenant
    return scopes


def _merged(raw: str | None, decided: str | None) -> Job | None:
    """A job record with its terminal decision (if any) merged over it."""
    if raw is None:
        return None
    return _merge(Job.model_validate_json(raw), decided)


def _merge(job: Job, decided: str | None) -> Job:
    """`job` with the terminal decision `decided` (JSON, if any) merged over it."""
    if decided is None:
        return job
    terminal = TerminalDecision.model_validate_json(decided)
    # Only a completed job has outputs: a job cancelled mid-upload may have saved some
    # to its record after the decision, and those must not be shown (or signed).
    completed = terminal.status is JobStatus.COMPLETED
    return job.model_copy(
        update={
            "status": terminal.status,
            "finished_at": terminal.decided_at,
            "error": terminal.error,
            "outputs": (terminal.outputs or job.outputs) if completed else [],
            "progress": 1.0 if completed else job.progress,
            "lease_until": None,
            "stage_times": terminal.stage_times or job.stage_times,
        }
    )


def first_stage(new: NewJob) -> Stage:
    """Where an admitted job starts: a job with no inputs has nothing to fetch."""
    return Stage.FETCH if new.inputs else Stage.RENDER


def _refusal(kind: str, limits: Limits) -> AdmissionRejected:
    if kind == "user":
        return AdmissionRejected(
            "user_concurrency_limit",
            f"user already has {limits.max_active_per_user} active jobs",
            limits.cap_retry_after_s,
            limits.max_active_per_user,
        )
    return AdmissionRejected(
        "tenant_concurrency_limit",
        f"tenant already has {limits.max_active_per_tenant} active jobs",
        limits.cap_retry_after_s,
        limits.max_active_per_tenant,
    )


def _lane(stage: Stage) -> str:
    return "notify" if stage is Stage.NOTIFY else "work"
