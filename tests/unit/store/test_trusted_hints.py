"""Trusted slot hints (issue 12): a win at a fresh hint skips the floor read; an old hint,
a probe past the hint or a hint without a stamp still reads it, so a purged generation is
never held again."""

from __future__ import annotations

from app.core.models import JobStatus
from app.store import keys
from app.store.jobs import JobStore, Limits, slot_hint_trust_s
from tests.state_helpers import FakeClock, memory_store, new_job

TRUST_S = 1000.0
ONE = Limits(max_active_per_user=1)
HINTS = keys.slot_hints_key(keys.user_scope("t1", "u1"))


def floor_reads(store: JobStore) -> list[str]:
    """Every floor read of the store's slots dict from now on."""
    reads: list[str] = []
    kv = store.slots
    inner = kv.get

    def get(key: str) -> str | None:
        if key.startswith(keys.SLOT_FLOOR_PREFIX):
            reads.append(key)
        return inner(key)

    kv.get = get  # type: ignore[method-assign]
    return reads


def run_one(store: JobStore, job_id: str) -> int:
    """Admit and complete a job; the generation of place 0 it held."""
    job = store.create(new_job(), job_id, ONE).job
    assert store.finish(job_id, JobStatus.COMPLETED)
    return job.slots[0].generation


def test_a_win_at_a_fresh_hint_reads_no_floor() -> None:
    store, _, clock = memory_store(FakeClock(), hint_trust_s=TRUST_S)
    reads = floor_reads(store)
    run_one(store, "j1")
    assert reads  # no stamped hint yet: the first admission checks
    reads.clear()
    clock.advance(TRUST_S / 2)
    assert run_one(store, "j2") == 1
    assert reads == []


def test_an_old_hint_still_reads_the_floor_and_gives_a_purged_tenure_back() -> None:
    store, _, clock = memory_store(FakeClock(), hint_trust_s=TRUST_S)
    run_one(store, "j1")
    old_hint = store.slots.get(HINTS)  # place 0 free at generation 1, stamped now
    assert old_hint is not None
    assert run_one(store, "j2") == 1
    clock.advance(2 * TRUST_S)
    store.purge("j2")  # generation 1's keys go; the place's floor rises to 2
    store.slots.put(HINTS, old_hint)  # a slow writer's lost update brings the hint back
    reads = floor_reads(store)
    job = store.create(new_job(), "j3", ONE).job
    assert reads
    assert job.slots[0].generation == 2  # not the purged generation 1


def test_a_win_past_the_hint_reads_the_floor() -> None:
    store, _, clock = memory_store(FakeClock(), hint_trust_s=TRUST_S)
    run_one(store, "j1")
    held = store.slots.get(HINTS)
    store.create(new_job(), "j2", ONE)
    assert held is not None
    assert store.finish("j2", JobStatus.COMPLETED)
    store.slots.put(HINTS, held)  # says generation 1, which j2 held and released
    reads = floor_reads(store)
    clock.advance(1)
    job = store.create(new_job(), "j3", ONE).job
    assert job.slots[0].generation == 2  # probed past the released generation 1
    assert reads


def test_no_trust_without_an_hour_of_retention_and_half_the_rest_above() -> None:
    assert slot_hint_trust_s(60) == 0.0
    assert slot_hint_trust_s(3600) == 0.0
    assert slot_hint_trust_s(7 * 86_400) == (7 * 86_400 - 3600) / 2
