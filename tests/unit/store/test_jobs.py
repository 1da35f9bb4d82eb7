"""The job state core on the in-memory backend: admission, terminal decisions, listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import AdmissionRejected, AlreadyTerminal, IdempotencyConflict, JobIdTaken
from app.core.models import JobError, JobStatus, OutputRef
from app.store.backends.base import KV
from app.store.backends.sqlite import SqliteBackend
from app.store.claims import SlotHolder, active_count, claim_slot, release_slot
from app.store.jobs import (
    ABANDONED_SLOT_GRACE_S,
    JobStore,
    Limits,
    body_fingerprint,
)
from app.store.keys import job_key, tenant_scope, user_scope
from tests.state_helpers import CountingKV, job_id, memory_store, new_job


def test_create_stores_a_queued_job_with_its_workflow() -> None:
    store, _, clock = memory_store()
    admission = store.create(new_job(metadata={"k": "v"}), "j1", Limits())
    assert not admission.replayed
    job = store.get("j1")
    assert job.status is JobStatus.QUEUED
    assert job.created_at == clock.now
    assert job.metadata == {"k": "v"}
    assert store.workflow("j1")["2"] == new_job().workflow["2"]
    assert list(store.active_ids()) == ["j1"]


def test_user_cap_admits_exactly_the_cap_and_says_which_limit() -> None:
    store, backend, _ = memory_store()
    for i in range(5):
        store.create(new_job(), f"j{i}", Limits(max_active_per_user=5))
    with pytest.raises(AdmissionRejected) as info:
        store.create(new_job(), "j5", Limits(max_active_per_user=5, cap_retry_after_s=7))
    assert info.value.code == "user_concurrency_limit"
    assert info.value.retry_after_s == 7
    assert info.value.limit == 5
    assert active_count(backend.kv("slots"), user_scope("t1", "u1")) == 5
    assert store.find("j5") is None


def test_other_users_are_not_limited_by_one_users_cap() -> None:
    store, _, _ = memory_store()
    for i in range(2):
        store.create(new_job(user="a"), f"a{i}", Limits(max_active_per_user=2))
    store.create(new_job(user="b"), "b0", Limits(max_active_per_user=2))


def test_tenant_cap_rejects_and_gives_back_the_user_slot() -> None:
    store, backend, _ = memory_store()
    cap = Limits(max_active_per_user=5, max_active_per_tenant=2)
    store.create(new_job(user="a"), "a0", cap)
    store.create(new_job(user="b"), "b0", cap)
    with pytest.raises(AdmissionRejected) as info:
        store.create(new_job(user="c"), "c0", cap)
    assert info.value.code == "tenant_concurrency_limit"
    assert active_count(backend.kv("slots"), user_scope("t1", "c")) == 0
    assert active_count(backend.kv("slots"), tenant_scope("t1")) == 2


def test_finishing_a_job_frees_its_slot_for_the_next() -> None:
    store, _, _ = memory_store()
    cap = Limits(max_active_per_user=1)
    store.create(new_job(), "j1", cap)
    with pytest.raises(AdmissionRejected):
        store.create(new_job(), "j2", cap)
    assert store.finish("j1", JobStatus.COMPLETED)
    store.create(new_job(), "j2", cap)


def test_terminal_state_is_decided_exactly_once() -> None:
    store, _, _ = memory_store()
    store.create(new_job(), "j1", Limits())
    outputs = [OutputRef(filename="a.png", content_type="image/png", size=3, key="k")]
    assert store.finish("j1", JobStatus.COMPLETED, outputs=outputs) is True
    assert store.finish("j1", JobStatus.FAILED, error=JobError(code="x", message="y")) is False
    with pytest.raises(AlreadyTerminal):
        store.cancel("j1")
    job = store.get("j1")
    assert job.status is JobStatus.COMPLETED
    assert job.outputs == outputs
    assert job.error is None


def test_terminals_reads_several_decisions_in_order() -> None:
    store, _, _ = memory_store()
    for name in ("j1", "j2", "j3"):
        store.create(new_job(), name, Limits(max_active_per_user=3))
    store.finish("j1", JobStatus.COMPLETED)
    store.cancel("j3")
    decisions = store.terminals(["j3", "j2", "j1", "unknown"])
    assert [d.status if d else None for d in decisions] == [
        JobStatus.CANCELLED,
        None,
        JobStatus.COMPLETED,
        None,
    ]


def test_late_stage_write_cannot_undo_a_cancel() -> None:
    # Given a running job that the client cancels
    store, _, _ = memory_store()
    store.create(new_job(), "j1", Limits())
    running = store.get("j1").model_copy(update={"status": JobStatus.RUNNING, "progress": 0.4})
    store.cancel("j1")
    # When the worker writes its stale snapshot (status running) afterwards
    store.save(running.model_copy(update={"progress": 0.9}))
    # Then the job still reads as cancelled, and completing it is refused
    assert store.get("j1").status is JobStatus.CANCELLED
    assert store.finish("j1", JobStatus.COMPLETED) is False
    assert store.get("j1").status is JobStatus.CANCELLED


def test_cancel_is_terminal_at_once_and_frees_the_slot() -> None:
    store, backend, _ = memory_store()
    store.create(new_job(), "j1", Limits(max_active_per_user=1))
    job = store.cancel("j1")
    assert job.status is JobStatus.CANCELLED
    assert job.error is not None and job.error.code == "cancelled"
    assert active_count(backend.kv("slots"), user_scope("t1", "u1")) == 0
    assert list(store.active_ids()) == []


def test_finish_refuses_non_terminal_status() -> None:
    store, _, _ = memory_store()
    store.create(new_job(), "j1", Limits())
    with pytest.raises(ValueError):
        store.finish("j1", JobStatus.RUNNING)


def test_rate_limit_is_a_fixed_window_per_tenant() -> None:
    store, _, clock = memory_store()
    clock.now = 60 * 1000 + 15  # 15 s into a window
    rate = Limits(max_active_per_user=100, rate_per_minute=3)
    for i in range(3):
        store.create(new_job(user=f"u{i}"), f"j{i}", rate)
    with pytest.raises(AdmissionRejected) as info:
        store.create(new_job(user="other"), "j3", rate)
    assert info.value.code == "rate_limited"
    assert info.value.retry_after_s == 45
    store.create(new_job(tenant="t2"), "t2-j", rate)  # other tenants unaffected
    clock.advance(45)
    store.create(new_job(user="other"), "j4", rate)  # a new window


def test_idempotent_replay_returns_the_first_job() -> None:
    store, _, _ = memory_store()
    body = {"workflow": {"a": 1}}
    first = store.create(
        new_job(idempotency_key="key-1", body_hash=body_fingerprint(body)), "j1", Limits()
    )
    again = store.create(
        new_job(idempotency_key="key-1", body_hash=body_fingerprint(body)), "j2", Limits()
    )
    assert again.replayed and again.job.id == first.job.id == "j1"
    assert store.find("j2") is None
    with pytest.raises(IdempotencyConflict) as info:
        store.create(
            new_job(idempotency_key="key-1", body_hash=body_fingerprint({"x": 2})),
            "j3",
            Limits(),
        )
    assert info.value.job_id == "j1"


def test_idempotency_keys_are_per_tenant() -> None:
    store, _, _ = memory_store()
    store.create(new_job(tenant="a", idempotency_key="k", body_hash="h"), "ja", Limits())
    admission = store.create(
        new_job(tenant="b", idempotency_key="k", body_hash="h"), "jb", Limits()
    )
    assert not admission.replayed


def test_rejected_request_releases_its_idempotency_key() -> None:
    store, _, _ = memory_store()
    cap = Limits(max_active_per_user=1)
    store.create(new_job(), "j1", cap)
    with pytest.raises(AdmissionRejected):
        store.create(new_job(idempotency_key="k", body_hash="h"), "j2", cap)
    store.finish("j1", JobStatus.COMPLETED)
    admission = store.create(new_job(idempotency_key="k", body_hash="h"), "j3", cap)
    assert not admission.replayed and admission.job.id == "j3"


def test_replay_does_not_count_against_caps() -> None:
    store, _, _ = memory_store()
    cap = Limits(max_active_per_user=1)
    store.create(new_job(idempotency_key="k", body_hash="h"), "j1", cap)
    assert store.create(new_job(idempotency_key="k", body_hash="h"), "j2", cap).replayed


def test_listing_is_newest_first_and_paginated() -> None:
    store, _, clock = memory_store()
    for i in range(7):
        clock.advance(1)
        store.create(new_job(), f"j{i}", Limits(max_active_per_user=100))
    store.create(new_job(user="someone-else"), "x", Limits())
    first = store.list_for_user("t1", "u1", limit=3)
    assert [j.id for j in first.jobs] == ["j6", "j5", "j4"]
    second = store.list_for_user("t1", "u1", limit=3, cursor=first.next_cursor)
    assert [j.id for j in second.jobs] == ["j3", "j2", "j1"]
    last = store.list_for_user("t1", "u1", limit=3, cursor=second.next_cursor)
    assert [j.id for j in last.jobs] == ["j0"]
    assert last.next_cursor is None


def test_listing_filters_by_status() -> None:
    store, _, _ = memory_store()
    for i in range(4):
        store.create(new_job(), f"j{i}", Limits())
    store.cancel("j1")
    store.cancel("j3")
    page = store.list_for_user("t1", "u1", status=JobStatus.CANCELLED)
    assert [j.id for j in page.jobs] == ["j3", "j1"]


def test_listing_reads_only_what_it_returns() -> None:
    # Given a store with 300 jobs of other users and 30 of ours
    store, _, _ = memory_store()
    for i in range(300):
        store.create(new_job(user=f"other{i}"), f"o{i}", Limits())
    for i in range(30):
        store.create(new_job(), f"j{i}", Limits(max_active_per_user=100))
    counting = CountingKV(store.admission)
    store.admission = counting  # type: ignore[assignment]
    jobs_counting = CountingKV(store.jobs)
    store.jobs = jobs_counting  # type: ignore[assignment]
    # When we list one page of 5
    page = store.list_for_user("t1", "u1", limit=5)
    # Then the reads are proportional to the page, not to the 330 jobs in the store
    assert len(page.jobs) == 5
    assert counting.reads + jobs_counting.reads <= 20


def test_a_page_reads_its_entries_and_its_records_in_one_query_each(tmp_path: Path) -> None:
    # Given 25 jobs of one user on SQLite, two of them cancelled
    store = JobStore(SqliteBackend(tmp_path / "s.db"), lambda: 1000.0)
    for i in range(25):
        store.create(new_job(), f"j{i}", Limits(max_active_per_user=100))
    store.cancel("j24")
    store.cancel("j20")
    statements: list[str] = []
    store.jobs._db.connection().set_trace_callback(statements.append)  # type: ignore[attr-defined]
    # When a page of 20 is listed, and the next page after it
    first = store.list_for_user("t1", "u1", limit=20)
    reads_first = [sql for sql in statements if sql.startswith("SELECT")]
    statements.clear()
    rest = store.list_for_user("t1", "u1", limit=20, cursor=first.next_cursor)
    reads_rest = [sql for sql in statements if sql.startswith("SELECT")]
    # Then both pages are right, with terminal decisions merged in
    assert [j.id for j in first.jobs] == [f"j{i}" for i in range(24, 4, -1)]
    assert [j.id for j in rest.jobs] == [f"j{i}" for i in range(4, -1, -1)]
    assert first.jobs[0].status is JobStatus.CANCELLED and first.jobs[1].status is JobStatus.QUEUED
    # And a page costs one query for its entries and one for its records and decisions
    # (the first page also finds the index's end: its hint and one probe past it), not
    # three reads per job
    assert len(reads_rest) == 2, reads_rest
    assert len(reads_first) <= 4, reads_first


def test_reconcile_frees_slots_of_a_job_that_died_between_decision_and_release() -> None:
    store, backend, _ = memory_store()
    store.create(new_job(), "j1", Limits(max_active_per_user=1))
    # Simulate a crash right after the terminal decision, before the release ran.
    store.jobs.put_if_absent("terminal:j1", '{"status":"failed","decided_at":1}')
    assert active_count(backend.kv("slots"), user_scope("t1", "u1")) == 1
    report = store.reconcile()
    assert report.slots_released == 1 and report.active_removed == 1
    assert active_count(backend.kv("slots"), user_scope("t1", "u1")) == 0
    assert store.reconcile().slots_released == 0  # idempotent


def test_reconcile_never_frees_a_live_jobs_slot() -> None:
    store, backend, clock = memory_store()
    store.create(new_job(), "live", Limits(max_active_per_user=2))
    clock.advance(ABANDONED_SLOT_GRACE_S * 10)
    assert store.reconcile().slots_released == 0
    assert active_count(backend.kv("slots"), user_scope("t1", "u1")) == 1


def test_a_stale_release_never_frees_the_next_holder() -> None:
    # Given place 0 released by its first holder and claimed again by a second job
    _store, backend, _ = memory_store()
    slots = backend.kv("slots")
    first = claim_slot(slots, "s", 1, SlotHolder("a", 0))
    assert first is not None
    assert release_slot(slots, first) is True
    second = claim_slot(slots, "s", 1, SlotHolder("b", 0))
    assert second is not None and second.index == first.index
    # When the first holder's release runs again (a retry, a slow reaper)
    # Then it frees nothing, says so, and the second holder still holds the place
    assert release_slot(slots, first) is False
    assert active_count(slots, "s") == 1
    assert claim_slot(slots, "s", 1, SlotHolder("c", 0)) is None


@pytest.mark.parametrize("id_from_client", [False, True], ids=["our id", "client id"])
def test_reconcile_frees_slots_of_an_admission_that_never_wrote_its_job(
    id_from_client: bool,
) -> None:
    store, _backend, clock = memory_store()
    real_put, real_put_if_absent = store.jobs.put, store.jobs.put_if_absent

    def died(key: str) -> None:
        if key == job_key("ghost"):
            raise RuntimeError("the admitting process died")

    def crash_put(key: str, value: str) -> None:
        died(key)
        real_put(key, value)

    def crash_put_if_absent(key: str, value: str) -> bool:
        died(key)
        return real_put_if_absent(key, value)

    # An admission that dies after winning its place, before writing the job record
    # (a plain write for our ids, put-if-absent for a client's)
    if id_from_client:
        store.jobs.put_if_absent = crash_put_if_absent  # type: ignore[method-assign]
    else:
        store.jobs.put = crash_put  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        store.create(
            new_job(), "ghost", Limits(max_active_per_user=1), id_from_client=id_from_client
        )
    store.jobs.put, store.jobs.put_if_absent = real_put, real_put_if_absent  # type: ignore[method-assign]
    assert not store.jobs.contains(job_key("ghost"))
    with pytest.raises(AdmissionRejected):
        store.create(new_job(), "j0", Limits(max_active_per_user=1))
    assert store.reconcile().slots_released == 0  # within the grace period
    clock.advance(ABANDONED_SLOT_GRACE_S + 1)
    assert store.reconcile().slots_released == 1
    store.create(new_job(), "j1", Limits(max_active_per_user=1))


def test_stage_claims_drop_duplicates_and_old_epochs() -> None:
    store, _, _ = memory_store()
    store.create(new_job(), "j1", Limits())
    from app.core.models import Stage

    assert store.claim_stage("j1", Stage.FETCH, 0) is True
    assert store.claim_stage("j1", Stage.FETCH, 0) is False  # duplicate message
    assert store.take_back("j1", 0) == 1
    assert store.take_back("j1", 0) is None  # a second reaper loses
    assert not store.is_current("j1", 0)
    assert store.claim_stage("j1", Stage.FETCH, 0) is False  # old epoch
    assert store.claim_stage("j1", Stage.FETCH, 1) is True


def test_many_jobs_reuse_slot_places() -> None:
    store, backend, _ = memory_store()
    for _ in range(20):
        jid = job_id()
        store.create(new_job(), jid, Limits(max_active_per_user=2))
        store.finish(jid, JobStatus.COMPLETED)
    assert active_count(backend.kv("slots"), user_scope("t1", "u1")) == 0
    store.create(new_job(), job_id(), Limits(max_active_per_user=2))
    store.create(new_job(), job_id(), Limits(max_active_per_user=2))
    with pytest.raises(AdmissionRejected):
        store.create(new_job(), job_id(), Limits(max_active_per_user=2))


def test_job_store_works_over_sqlite(tmp_path: Path) -> None:

    store = JobStore(SqliteBackend(tmp_path / "s.db"), lambda: 1000.0)
    store.create(new_job(), "j1", Limits(max_active_per_user=1))
    with pytest.raises(AdmissionRejected):
        store.create(new_job(), "j2", Limits(max_active_per_user=1))
    assert store.cancel("j1").status is JobStatus.CANCELLED


class _RacingKV:
    """A jobs dict where another writer creates `job:{id}` between a check and a write."""

    def __init__(self, inner: KV, job_id: str, record: str) -> None:
        self.inner = inner
        self.job_id = job_id
        self.record = record

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put(self, key: str, value: str) -> None:
        if key == job_key(self.job_id) and not self.inner.contains(key):
            self.inner.put(key, self.record)  # the rival wins the race just now
        self.inner.put(key, value)

    def put_if_absent(self, key: str, value: str) -> bool:
        if key == job_key(self.job_id) and not self.inner.contains(key):
            self.inner.put(key, self.record)
        return self.inner.put_if_absent(key, value)


def test_create_never_overwrites_a_job_a_racing_create_wrote() -> None:
    # A client-chosen id (the intake queue) may race another message with the same id
    store, backend, _ = memory_store()
    rival = store.create(new_job(user="alice"), "other", Limits()).job
    record = rival.model_copy(update={"id": "j1"}).model_dump_json()
    store.jobs = _RacingKV(store.jobs, "j1", record)  # type: ignore[assignment]
    with pytest.raises(JobIdTaken):
        store.create(
            new_job(user="bob", idempotency_key="k", body_hash="h"),
            "j1",
            Limits(),
            id_from_client=True,
        )
    assert store.get("j1").user_id == "alice"  # the first writer's job stands
    # What the refused create took is given back: its slot and its idempotency key.
    assert active_count(backend.kv("slots"), user_scope("t1", "bob")) == 0
    admission = store.create(
        new_job(user="bob", idempotency_key="k", body_hash="h"), "j2", Limits()
    )
    assert not admission.replayed


def test_idempotency_keys_are_per_user_and_a_replay_never_crosses_users() -> None:
    store, _, _ = memory_store()
    body = body_fingerprint({"workflow": {"a": 1}})
    store.create(new_job(user="alice", idempotency_key="k", body_hash=body), "ja", Limits())
    bob = store.create(new_job(user="bob", idempotency_key="k", body_hash=body), "jb", Limits())
    assert not bob.replayed and bob.job.id == "jb" and bob.job.user_id == "bob"
    # Bob's key now conflicts only with Bob's own job; nothing of Alice's is named.
    with pytest.raises(IdempotencyConflict) as info:
        store.create(new_job(user="bob", idempotency_key="k", body_hash="x"), "jc", Limits())
    assert info.value.job_id == "jb"
    assert (
        store.create(
            new_job(user="alice", idempotency_key="k", body_hash=body), "jd", Limits()
        ).job.id
        == "ja"
    )


def test_user_ids_with_colons_do_not_share_idempotency_keys() -> None:
    store, _, _ = memory_store()
    store.create(new_job(user="a:b", idempotency_key="c", body_hash="h"), "j1", Limits())
    admission = store.create(
        new_job(user="a", idempotency_key="b:c", body_hash="h"), "j2", Limits()
    )
    assert not admission.replayed and admission.job.id == "j2"


def test_a_huge_cap_costs_what_the_held_slots_cost() -> None:
    # Given a scope with three held places and a cap far too big to enumerate
    _store, backend, _ = memory_store()
    slots = CountingKV(backend.kv("slots"))
    huge = 10**18
    for name in "abc":
        assert claim_slot(slots, "s", huge, SlotHolder(name, 0)) is not None  # type: ignore[arg-type]
    # When one more is admitted
    slots.reads = 0
    ref = claim_slot(slots, "s", huge, SlotHolder("d", 0))  # type: ignore[arg-type]
    # Then it takes the next place with a handful of reads (sorting range(cap) first
    # raised MemoryError here, and cost 171 ms at a cap of 1,000,000)
    assert ref is not None and ref.index == 3
    assert slots.reads <= 3
