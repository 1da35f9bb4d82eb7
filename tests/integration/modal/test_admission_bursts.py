"""Admission on the Modal path (calls overlapped on a thread pool) stays strict.

The cross-process burst tests run on SQLite, whose backend keeps calls in order; these
run the overlapped admission of `JobStore.create` over the Modal emulator, with real
sleeping per call so that concurrent requests interleave.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.core.errors import AdmissionRejected, IdempotencyConflict
from app.core.models import SlotRef
from app.store import keys
from app.store.backends.memory import MemoryBackend
from app.store.backends.modal import ModalBackend
from app.store.claims import SlotHolder, claim_slot, purge_slot, release_slot
from app.store.jobs import JobStore, Limits
from tests.modal_emulator import ModalEmulator
from tests.state_helpers import FakeClock, new_job

_ids = itertools.count()


@pytest.fixture
def store() -> Iterator[JobStore]:
    emu = ModalEmulator(real_latency_scale=0.04)  # 1 ms per call, slept for real
    with emu.install():
        yield JobStore(ModalBackend("burst"), time.time)
    emu.close()


def burst(
    store: JobStore, users: list[str], limits: Limits, key: str | None = None
) -> Counter[str]:
    """Submit one request per entry of `users` at once; outcome -> count."""

    def submit(user: str) -> str:
        try:
            admission = store.create(
                new_job(user=user, idempotency_key=key, body_hash="same"),
                f"job-{next(_ids)}",
                limits,
            )
        except AdmissionRejected as exc:
            return exc.code
        except IdempotencyConflict:
            return "in_flight"
        return "replayed" if admission.replayed else f"admitted:{user}"

    with ThreadPoolExecutor(max_workers=len(users)) as pool:
        return Counter(pool.map(submit, users))


def admitted(outcomes: Counter[str]) -> int:
    return sum(n for outcome, n in outcomes.items() if outcome.startswith("admitted"))


def test_a_burst_for_one_user_admits_exactly_the_cap(store: JobStore) -> None:
    outcomes = burst(store, ["u1"] * 40, Limits(max_active_per_user=5))
    assert admitted(outcomes) == 5
    assert outcomes["user_concurrency_limit"] == 35


def test_a_burst_over_many_users_admits_exactly_the_tenant_cap(store: JobStore) -> None:
    users = [f"u{i % 8}" for i in range(48)]
    outcomes = burst(store, users, Limits(max_active_per_user=3, max_active_per_tenant=7))
    assert admitted(outcomes) == 7
    per_user = Counter(o.split(":")[1] for o in outcomes.elements() if o.startswith("admitted"))
    assert max(per_user.values()) <= 3


def test_a_burst_with_a_rate_limit_never_admits_over_it(store: JobStore) -> None:
    users = [f"u{i % 6}" for i in range(40)]
    limits = Limits(max_active_per_user=5, max_active_per_tenant=30, rate_per_minute=9)
    outcomes = burst(store, users, limits)
    assert 0 < admitted(outcomes) <= 9
    assert outcomes["rate_limited"] >= 40 - 9


def test_one_idempotency_key_makes_one_job(store: JobStore) -> None:
    outcomes = burst(store, ["u1"] * 20, Limits(max_active_per_user=5), key="k1")
    assert admitted(outcomes) == 1
    assert outcomes["replayed"] + outcomes["in_flight"] == 19


class RoundTrips(MemoryBackend):
    """The memory backend, marked as one whose calls are worth overlapping."""

    concurrent_calls = True


def test_a_stale_hint_on_the_overlapped_path_cannot_take_a_purged_tenure() -> None:
    backend, clock = RoundTrips(), FakeClock()
    store = JobStore(backend, clock)
    slots = backend.kv(keys.SLOTS_DICT)
    scope = keys.user_scope("t1", "u1")
    first = claim_slot(slots, scope, 1, SlotHolder("a", 0.0))
    assert first == SlotRef(scope=scope, index=0, generation=0)
    stale = slots.get(keys.slot_hints_key(scope)) or ""
    release_slot(slots, first)
    assert claim_slot(slots, scope, 1, SlotHolder("b", 1.0)) is not None  # generation 1
    assert purge_slot(slots, first) == 2
    slots.put(keys.slot_hints_key(scope), stale)  # a slow claimer's old view, written back
    with pytest.raises(AdmissionRejected) as refused:
        store.create(new_job(), "c", Limits(max_active_per_user=1))
    assert refused.value.code == "user_concurrency_limit"
    assert not slots.contains(keys.slot_key(scope, 0, 0))  # the purged tenure was given back
