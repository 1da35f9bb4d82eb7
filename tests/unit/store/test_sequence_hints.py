"""Sequence hints ride in the scope's slot-hint record: one read serves both."""

from __future__ import annotations

import json

from app.core.models import JobStatus
from app.store import keys
from app.store.backends.memory import MemoryBackend
from app.store.jobs import RATE_WINDOW_S, JobStore, Limits
from tests.state_helpers import FakeClock, new_job


def store() -> tuple[JobStore, FakeClock]:
    clock = FakeClock()
    return JobStore(MemoryBackend(), clock), clock


def record(store: JobStore, scope: str) -> dict[str, object]:
    raw = store.slots.get(keys.slot_hints_key(scope))
    assert raw is not None
    value: dict[str, object] = json.loads(raw)
    return value


def test_the_index_hint_is_in_the_users_record_and_no_hint_key_is_written() -> None:
    jobs, _clock = store()
    for n in range(3):
        jobs.create(new_job(), f"j{n}", Limits())
    index = keys.index_prefix("t1", "u1")
    assert record(jobs, keys.user_scope("t1", "u1"))["seq"] == {index: 3}
    assert jobs.admission.get(keys.sequence_hint_key(index)) is None
    assert [job.id for job in jobs.list_for_user("t1", "u1").jobs] == ["j2", "j1", "j0"]


def test_a_record_from_before_falls_back_to_the_old_hint_key() -> None:
    jobs, _clock = store()
    scope, index = keys.user_scope("t1", "u1"), keys.index_prefix("t1", "u1")
    jobs.slots.put(keys.slot_hints_key(scope), json.dumps({"gen": {}, "held": []}))
    jobs.admission.put(keys.sequence_hint_key(index), "3")  # entries 0-2 were purged
    jobs.create(new_job(), "j", Limits())
    assert jobs.admission.get(keys.sequence_key(index, 3)) == "j"
    assert jobs.admission.get(keys.sequence_key(index, 0)) is None


def test_the_rate_hint_is_in_the_tenants_record_for_the_current_window_only() -> None:
    jobs, clock = store()
    limits = Limits(rate_per_minute=10)
    jobs.create(new_job(), "a", limits)
    jobs.create(new_job(), "b", limits)
    window = int(clock.now // RATE_WINDOW_S)
    tenant = keys.tenant_scope("t1")
    assert record(jobs, tenant)["seq"] == {keys.rate_prefix("t1", window): 2}
    clock.advance(RATE_WINDOW_S)
    jobs.create(new_job(), "c", limits)
    assert record(jobs, tenant)["seq"] == {keys.rate_prefix("t1", window + 1): 1}


def test_a_refused_queued_request_is_indexed_through_the_users_record() -> None:
    from app.core.models import JobError

    jobs, _clock = store()
    jobs.create(new_job(), "a", Limits())
    assert jobs.reject("b", "t1", "u1", JobError(code="x", message="refused"))
    index = keys.index_prefix("t1", "u1")
    assert record(jobs, keys.user_scope("t1", "u1"))["seq"] == {index: 2}
    assert [job.id for job in jobs.list_for_user("t1", "u1").jobs] == ["b", "a"]


def test_the_record_names_its_index_position_even_when_the_first_probe_lost() -> None:
    jobs, clock = store()
    index = keys.index_prefix("t1", "u1")
    jobs.create(new_job(), "a", Limits())
    # A concurrent admission took number 1 without its hint landing yet.
    jobs.admission.put(keys.sequence_key(index, 1), "other")
    jobs.create(new_job(idempotency_key="k"), "b", Limits())
    b = jobs.get("b")
    assert (jobs.get("a").index_position, b.index_position) == (0, 2)
    assert b.idempotency_record == keys.idem_key("t1", "u1", "k")
    # The release reads what the job owns from its record (not the active entry), and
    # the purge deletes that index entry and idempotency record by key.
    jobs.active.put(keys.active_key("b"), '{"at": 0}')
    assert jobs.finish("b", JobStatus.CANCELLED)
    (entry,) = jobs.retention.entries(keys.retention_bucket(clock.now))
    assert (entry.job_id, entry.index, entry.idem) == ("b", 2, b.idempotency_record)
    clock.advance(1)
    assert jobs.purge_due(clock.now) == 1
    assert jobs.admission.get(keys.sequence_key(index, 2)) is None
    assert jobs.admission.get(keys.sequence_key(index, 1)) == "other"
    assert jobs.idem.get(keys.idem_key("t1", "u1", "k")) is None


def test_an_admission_whose_first_index_probe_lost_writes_the_real_next_number() -> None:
    # Concurrent admissions of one user start from the same stale hint; each loser used
    # to write "first probe + 1", so the record kept pointing below its peers' wins.
    for id_from_client in (False, True):
        jobs, _clock = store()
        scope, index = keys.user_scope("t1", "u1"), keys.index_prefix("t1", "u1")
        for n in range(5):  # entries 0-4 taken behind the hint's back
            jobs.admission.put(keys.sequence_key(index, n), f"other{n}")
        job_id = "job_" + "a" * 26 if id_from_client else "j"
        admitted = jobs.create(new_job(), job_id, Limits(), id_from_client=id_from_client)
        assert admitted.job.index_position == 5
        assert record(jobs, scope)["seq"] == {index: 6}
