"""The retention index: one dict per hour of end, the cursor, and the old hour sequences."""

from __future__ import annotations

import json

from app.core.models import JobStatus
from app.store import keys
from app.store.backends.memory import MemoryBackend
from app.store.jobs import JobStore, Limits
from tests.modal_emulator import ModalEmulator
from tests.state_helpers import FakeClock, new_job

HOUR = keys.RETENTION_BUCKET_S


def ended(jobs: JobStore, job_id: str) -> None:
    jobs.create(new_job(), job_id, Limits(max_active_per_user=100))
    assert jobs.finish(job_id, JobStatus.COMPLETED)


def test_an_ended_job_is_one_entry_in_its_hour_and_a_second_index_changes_nothing() -> None:
    backend, clock = MemoryBackend(), FakeClock()
    jobs = JobStore(backend, clock)
    ended(jobs, "a")
    bucket = keys.retention_bucket(clock.now)
    hour = backend.kv(keys.retention_hour_dict(bucket))
    assert json.loads(hour.get("a") or "{}")["job"] == "a"
    assert jobs.retention.cursor() == bucket  # created with the first entry ever
    jobs.retention.add("a", None, 0, clock.now)  # as reconcile redoing a cut-short release
    assert [e.job_id for e in jobs.retention.entries(bucket)] == ["a"]
    clock.advance(2 * HOUR)
    assert jobs.purge_due(clock.now - HOUR) == 1
    assert jobs.find("a") is None


def test_hours_indexed_by_the_old_sequence_are_still_purged_and_their_hint_goes() -> None:
    backend, clock = MemoryBackend(), FakeClock()
    jobs = JobStore(backend, clock)
    jobs.create(new_job(), "old", Limits())
    assert jobs.finish("old", JobStatus.COMPLETED)
    bucket = keys.retention_bucket(clock.now)
    # What the release wrote before issue 12: a sequence entry and its hint, no hour dict.
    backend.drop_kv(keys.retention_hour_dict(bucket))
    meta, prefix = backend.kv(keys.RETENTION_DICT), keys.retention_prefix(bucket)
    meta.put(keys.sequence_key(prefix, 0), json.dumps({"job": "old", "idem": None, "index": 0}))
    meta.put(keys.sequence_hint_key(prefix), "1")
    ended(jobs, "new")  # the same hour, the new way
    clock.advance(3 * HOUR)
    assert jobs.purge_due(clock.now - HOUR) == 2
    assert (jobs.find("old"), jobs.find("new")) == (None, None)
    assert list(meta.keys()) == [keys.RETENTION_CURSOR_KEY]  # sequence and hint gone
    assert jobs.retention.cursor() == bucket + 2  # passed the finished hours


def test_each_process_makes_sure_of_the_cursor_once_per_hour() -> None:
    backend, clock = MemoryBackend(), FakeClock(now=100 * HOUR + 10)
    jobs = JobStore(backend, clock)
    ended(jobs, "a")
    meta = backend.kv(keys.RETENTION_DICT)
    meta.pop(keys.RETENTION_CURSOR_KEY)
    ended(jobs, "b")  # the same hour: this process already saw the cursor
    assert jobs.retention.cursor() is None
    clock.advance(HOUR)
    ended(jobs, "c")  # a new hour: checked (and here created) before its entry
    assert jobs.retention.cursor() == 101
    assert JobStore(backend, clock).retention.cursor() == 101


def test_a_finished_hour_s_dict_is_deleted_on_modal() -> None:
    emu = ModalEmulator()
    with emu.install():
        from app.store.backends.modal import ModalBackend

        clock = FakeClock(now=emu.clock.now())
        jobs = JobStore(ModalBackend("ret"), clock)
        ended(jobs, "a")
        name = f"ret-{keys.retention_hour_dict(keys.retention_bucket(clock.now))}"
        assert (None, name) in emu.dicts
        clock.advance(3 * HOUR)
        assert jobs.purge_due(clock.now - HOUR) == 1
        assert (None, name) not in emu.dicts
        assert jobs.purge_due(clock.now - HOUR) == 0
    emu.close()


def test_inside_the_cutoff_s_own_hour_only_the_jobs_ended_before_it_go() -> None:
    backend, clock = MemoryBackend(), FakeClock(now=100 * HOUR + 600)
    jobs = JobStore(backend, clock)
    ended(jobs, "early")  # 10 minutes into the hour
    clock.advance(40 * 60)
    ended(jobs, "late")  # 50 minutes in
    assert jobs.purge_due(100 * HOUR + 30 * 60) == 1  # the cutoff: 30 minutes in
    assert jobs.find("early") is None
    assert jobs.find("late") is not None
    assert jobs.retention.cursor() == 100  # the hour is not over for cleanup
    assert jobs.purge_due(101 * HOUR) == 1
    assert jobs.find("late") is None
