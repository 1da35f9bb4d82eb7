"""Property test: no sequence of operations breaks the state core's invariants.

Invariants checked after every step:
- a job has at most one terminal state, and once decided it never changes;
- the slots held in a scope never exceed its cap;
- every slot held belongs to a job that is not terminal, once reconciled;
- a job is either admitted (has a record) or holds no slot.

Purging ended jobs (cleanup) runs among the steps, and so do stale slot hints (a slow
claimer's lost update writing an old view back), so a purged generation can never be
claimed again while a newer tenure of its place is held. The store trusts fresh hints
(`hint_trust_s`, no floor read) and purges, as cleanup does, only tenures released at
least that long ago: the trust's one premise.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from app.core.errors import AdmissionRejected, AlreadyTerminal
from app.core.models import JobError, JobStatus, Stage
from app.store import keys
from app.store.claims import held_slots
from app.store.jobs import JobStore, Limits
from tests.state_helpers import FakeClock, memory_store, new_job

USER_CAP = 3
TENANT_CAP = 4
USERS = ["alice", "bob", "carol"]
#: The store's hint trust; a purge waits at least this long after the job's release.
TRUST_S = 1000.0
LIMITS = Limits(max_active_per_user=USER_CAP, max_active_per_tenant=TENANT_CAP)


class JobLifecycle(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.store: JobStore
        self.store, self.backend, self.clock = memory_store(FakeClock(), hint_trust_s=TRUST_S)
        self.counter = 0
        self.decided: dict[str, JobStatus] = {}
        #: When each decided job's slots were freed (its decision, or the reconcile after
        #: a crash between decision and release).
        self.released_at: dict[str, float] = {}
        self.old_hints: dict[str, str] = {}

    @rule(target=jobs, user=st.sampled_from(USERS))
    def create(self, user: str) -> str:
        self.counter += 1
        jid = f"j{self.counter}"
        try:
            self.store.create(new_job(user=user), jid, LIMITS)
        except AdmissionRejected:
            assert self.store.find(jid) is None
        return jid

    @rule(jid=jobs, progress=st.floats(0, 1))
    def advance(self, jid: str, progress: float) -> None:
        job = self.store.find(jid)
        if job is None:
            return
        # A stage writes its (possibly stale) snapshot, as a racing worker would.
        self.store.save(
            job.model_copy(
                update={
                    "status": JobStatus.RUNNING,
                    "stage": Stage.RENDER,
                    "progress": progress,
                }
            )
        )

    @rule(jid=jobs, status=st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED]))
    def finish(self, jid: str, status: JobStatus) -> None:
        if self.store.find(jid) is None:
            return
        error = JobError(code="x", message="x") if status is JobStatus.FAILED else None
        won = self.store.finish(jid, status, error=error)
        assert won == (jid not in self.decided)
        self.decided.setdefault(jid, status)
        self.released_at.setdefault(jid, self.clock())

    @rule(jid=jobs)
    def cancel(self, jid: str) -> None:
        if self.store.find(jid) is None:
            return
        try:
            self.store.cancel(jid)
            assert jid not in self.decided
            self.decided[jid] = JobStatus.CANCELLED
            self.released_at[jid] = self.clock()
        except AlreadyTerminal:
            assert jid in self.decided

    @rule(jid=jobs)
    def crash_after_decision(self, jid: str) -> None:
        # The terminal record is written but the winner dies before releasing slots.
        if self.store.find(jid) is None or jid in self.decided:
            return
        terminal = '{"status":"failed","decided_at":0}'
        assert self.store.jobs.put_if_absent(f"terminal:{jid}", terminal)
        self.decided[jid] = JobStatus.FAILED

    def _reconcile(self) -> None:
        self.store.reconcile()
        for jid in self.decided:
            self.released_at.setdefault(jid, self.clock())

    @rule()
    def reconcile(self) -> None:
        self._reconcile()
        for ref, holder in held_slots(self.store.slots):
            assert holder.job_id not in self.decided, (ref, holder)

    @rule(jid=jobs)
    def purge(self, jid: str) -> None:
        # Cleanup runs long after fail_stale has reconciled the job.
        if jid not in self.decided:
            return
        self._reconcile()
        if self.clock() - self.released_at[jid] < TRUST_S:
            return  # not due: retention outlasts the hint trust
        self.store.purge(jid)
        del self.decided[jid]
        del self.released_at[jid]
        assert self.store.find(jid) is None

    @rule()
    def remember_hints(self) -> None:
        kv = self.store.slots
        self.old_hints = {k: kv.get(k) or "" for k in kv.keys(keys.SLOT_HINTS_PREFIX)}

    @rule()
    def write_old_hints_back(self) -> None:
        for key, value in self.old_hints.items():
            self.store.slots.put(key, value)

    @rule(seconds=st.integers(0, 3600))
    def tick(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @invariant()
    def terminal_states_never_change(self) -> None:
        for jid, status in self.decided.items():
            assert self.store.get(jid).status is status

    @invariant()
    def caps_hold(self) -> None:
        per_scope: dict[str, int] = {}
        for ref, _ in held_slots(self.store.slots):
            per_scope[ref.scope] = per_scope.get(ref.scope, 0) + 1
        for scope, count in per_scope.items():
            cap = TENANT_CAP if scope.startswith("tenant:") else USER_CAP
            assert count <= cap, (scope, count)

    @invariant()
    def slots_belong_to_admitted_jobs(self) -> None:
        for _, holder in held_slots(self.store.slots):
            assert self.store.find(holder.job_id) is not None


TestJobLifecycle = JobLifecycle.TestCase
TestJobLifecycle.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
