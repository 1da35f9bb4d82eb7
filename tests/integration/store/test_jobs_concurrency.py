"""The state core under real concurrency: separate OS processes on one SQLite file."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import AdmissionRejected, AlreadyTerminal
from app.core.models import JobStatus
from app.store.backends.sqlite import SqliteBackend
from app.store.claims import active_count, held_slots
from app.store.jobs import JobStore, Limits
from app.store.keys import tenant_scope, user_scope
from tests.state_helpers import new_job

CTX = mp.get_context("fork")


def _store(db: Path) -> JobStore:
    return JobStore(SqliteBackend(db), lambda: 1_700_000_000.0)


def _burst_worker(
    db: Path, barrier: Any, worker: int, count: int, users: list[str], limits: Limits, results: Any
) -> None:
    store = _store(db)
    barrier.wait()
    admitted = rejected = 0
    for i in range(count):
        user = users[i % len(users)]
        try:
            store.create(new_job(user=user), f"w{worker}-{i}", limits)
            admitted += 1
        except AdmissionRejected:
            rejected += 1
    results.put((admitted, rejected))


def _run_burst(
    db: Path, processes: int, per_process: int, users: list[str], limits: Limits
) -> tuple[int, int]:
    SqliteBackend(db).close()  # create the schema once, before the race
    barrier = CTX.Barrier(processes)
    results = CTX.Queue()
    procs = [
        CTX.Process(
            target=_burst_worker, args=(db, barrier, w, per_process, users, limits, results)
        )
        for w in range(processes)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return sum(a for a, _ in outcomes), sum(r for _, r in outcomes)


def test_burst_of_8_for_one_user_with_cap_5_admits_exactly_5(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    admitted, rejected = _run_burst(db, 8, 1, ["u1"], Limits(max_active_per_user=5))
    assert (admitted, rejected) == (5, 3)
    store = _store(db)
    assert active_count(store.slots, user_scope("t1", "u1")) == 5


def test_burst_of_200_from_8_processes_admits_exactly_the_cap(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    admitted, rejected = _run_burst(db, 8, 25, ["u1"], Limits(max_active_per_user=5))
    assert (admitted, rejected) == (5, 195)


def test_tenant_cap_holds_across_many_users_and_processes(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    users = [f"user{i}" for i in range(20)]
    limits = Limits(max_active_per_user=3, max_active_per_tenant=10)
    admitted, rejected = _run_burst(db, 8, 25, users, limits)
    assert (admitted, rejected) == (10, 190)
    store = _store(db)
    assert active_count(store.slots, tenant_scope("t1")) == 10
    # A user slot claimed by a request the tenant cap then refused was given back.
    user_held = sum(1 for ref, _ in held_slots(store.slots, "user:"))
    assert user_held == 10


def _racer(db: Path, action: str, rounds: int, barrier: Any, results: Any) -> None:
    store = _store(db)
    wins = []
    for i in range(rounds):
        barrier.wait()
        if action == "cancel":
            try:
                store.cancel(f"race-{i}")
                wins.append(True)
            except AlreadyTerminal:
                wins.append(False)
        else:
            wins.append(store.finish(f"race-{i}", JobStatus.COMPLETED))
        barrier.wait()
    results.put((action, wins))


@pytest.mark.timeout(180)
def test_cancel_racing_completion_200_times_ends_in_one_terminal_state(tmp_path: Path) -> None:
    # Given a user with a cap of 1, so each round's job can only be admitted if the
    # previous round freed its slot exactly once
    db = tmp_path / "s.db"
    store = _store(db)
    rounds = 200
    barrier = CTX.Barrier(3)
    results = CTX.Queue()
    procs = [
        CTX.Process(target=_racer, args=(db, action, rounds, barrier, results))
        for action in ("cancel", "complete")
    ]
    for p in procs:
        p.start()
    for i in range(rounds):
        store.create(new_job(), f"race-{i}", Limits(max_active_per_user=1))
        barrier.wait()  # When a canceller and a completer race on it
        barrier.wait()
    outcome = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    # Then exactly one of them won every round, and the job reads as the winner's state
    for i in range(rounds):
        cancel_won, complete_won = outcome["cancel"][i], outcome["complete"][i]
        assert cancel_won != complete_won, i
        expected = JobStatus.CANCELLED if cancel_won else JobStatus.COMPLETED
        assert store.get(f"race-{i}").status is expected
    # And every slot was freed exactly once: none held, and the cap still holds
    assert active_count(store.slots, user_scope("t1", "u1")) == 0
    store.create(new_job(), "after", Limits(max_active_per_user=1))
    with pytest.raises(AdmissionRejected):
        store.create(new_job(), "after-2", Limits(max_active_per_user=1))
    # Both outcomes occurred, so the race was real
    assert any(outcome["cancel"]) and any(outcome["complete"])
