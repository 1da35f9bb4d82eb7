"""Heartbeats: a working holder keeps its job, a dead one loses it within a lease."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.core.models import Job, JobStatus, Stage
from app.engine.deps import Deps
from app.engine.heartbeat import heartbeat, renew_once
from app.engine.maintenance import fail_stale
from app.engine.pipeline import enqueue, process_message
from app.store.backends.base import Backend
from app.store.backends.memory import MemoryBackend
from app.store.backends.sqlite import SqliteBackend
from app.store.jobs import JobStore, Limits
from tests.state_helpers import FakeClock, new_job

#: Generous: only reached if the heartbeat thread never renews (the test then fails).
EVENT_TIMEOUT_S = 10.0


@pytest.fixture(params=["memory", "sqlite"])
def deps(tmp_path: Path, request: pytest.FixtureRequest) -> Deps:
    """Both local backends: the heartbeat thread writes through the same store."""
    settings = Settings(data_dir=tmp_path / "data", stage_lease_s=30, stage_lease_renew_s=0.01)
    backend: Backend = (
        MemoryBackend() if request.param == "memory" else SqliteBackend(tmp_path / "s.db")
    )
    return Deps(settings=settings, backend=backend, clock=FakeClock())


def _admit(deps: Deps) -> str:
    deps.jobs.create(new_job(timeout_s=3600), "j1", Limits())
    enqueue(deps, "j1", Stage.FETCH)
    raw = deps.queue(Stage.FETCH).get()
    assert raw is not None
    return raw


def test_defaults_are_a_short_lease_renewed_well_within_it() -> None:
    settings = Settings()
    assert settings.stage_lease_s == 30
    assert settings.stage_lease_renew_s == 10
    with pytest.raises(ValueError, match="shorter"):
        Settings(stage_lease_s=10, stage_lease_renew_s=10)


def test_a_long_stage_keeps_its_job_while_its_heartbeat_renews(
    deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = _admit(deps)
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    renewed = threading.Event()
    real = JobStore.renew_lease

    def watched(self: JobStore, *args: Any) -> bool:
        ok = real(self, *args)
        renewed.set()
        return ok

    monkeypatch.setattr(JobStore, "renew_lease", watched)
    seen: dict[str, int] = {}

    def long_render(job: Job, deps: Deps) -> Job:
        # Far past the lease the stage took at its start, as in a long render...
        clock.advance(25)
        renewed.clear()
        assert renewed.wait(EVENT_TIMEOUT_S)
        clock.advance(25)
        renewed.clear()
        assert renewed.wait(EVENT_TIMEOUT_S)
        # ...the reaper still sees a live holder.
        seen.update(fail_stale(deps))
        return job

    process_message(raw, deps, {Stage.FETCH: long_render})
    assert seen["taken_back"] == 0
    assert deps.jobs.get("j1").epoch == 0
    assert deps.queue(Stage.RENDER).len() == 1  # handed on by the original holder


def test_a_dead_holder_is_taken_back_once_its_lease_runs_out_and_runs_again(deps: Deps) -> None:
    raw = _admit(deps)
    clock: FakeClock = deps.clock  # type: ignore[assignment]

    def killed(job: Job, deps: Deps) -> Job:
        raise SystemExit  # kill -9 of the worker: no more heartbeats

    with pytest.raises(SystemExit):
        process_message(raw, deps, {Stage.FETCH: killed})
    clock.advance(29)
    assert fail_stale(deps)["taken_back"] == 0
    clock.advance(2)  # 31 s after the last heartbeat: well under a minute
    assert fail_stale(deps)["taken_back"] == 1
    job = deps.jobs.get("j1")
    assert job.epoch == 1  # the attempt is visible in the job view
    again = deps.queue(Stage.FETCH).get()
    assert again is not None
    process_message(again, deps, {Stage.FETCH: lambda job, deps: job})
    assert deps.queue(Stage.RENDER).len() == 1
    assert deps.jobs.get("j1").status is JobStatus.RUNNING


def test_a_superseded_holder_cannot_renew(deps: Deps) -> None:
    _admit(deps)
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    job = deps.jobs.get("j1").model_copy(update={"lease_until": clock() + 30, "stage": Stage.FETCH})
    deps.jobs.save(job)
    assert renew_once(deps, "j1", Stage.FETCH, 0)
    assert deps.jobs.lease_until(job) == clock() + 30
    assert deps.jobs.take_back("j1", 0) == 1
    clock.advance(5)
    assert not renew_once(deps, "j1", Stage.FETCH, 0)
    # A renewal that slipped in after the take-back names the old epoch: ignored.
    newer = job.model_copy(update={"epoch": 1, "lease_until": clock() + 1})
    assert deps.jobs.lease_until(newer) == clock() + 1


def test_one_thread_renews_every_running_stage_and_stops_with_each(
    deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    renewed: list[str] = []
    both = threading.Event()

    def counted(self: JobStore, job_id: str, *args: Any) -> bool:
        renewed.append(job_id)
        if {"a", "b"} <= set(renewed):
            both.set()
        return True

    monkeypatch.setattr(JobStore, "renew_lease", counted)
    with heartbeat(deps, "warm", Stage.RENDER, 0):
        pass  # the renewing thread exists from here on
    threads = threading.active_count()
    for n in range(20):  # short stages: no thread of their own each
        with heartbeat(deps, f"short{n}", Stage.UPLOAD, 0):
            pass
    assert threading.active_count() == threads
    with heartbeat(deps, "a", Stage.RENDER, 0), heartbeat(deps, "b", Stage.UPLOAD, 0):
        assert both.wait(EVENT_TIMEOUT_S)  # two stages at once, each renewed
        assert threading.active_count() == threads
    ended = len(renewed)
    time.sleep(deps.settings.stage_lease_renew_s * 20)
    assert len(renewed) == ended  # a finished stage's lease is not renewed again


def test_a_refused_renewal_stops_that_lease_only(
    deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    kept = threading.Event()

    def refuse_a(self: JobStore, job_id: str, *args: Any) -> bool:
        calls.append(job_id)
        if calls.count("b") >= 3:
            kept.set()
        return job_id != "a"  # "a" was superseded

    monkeypatch.setattr(JobStore, "renew_lease", refuse_a)
    with heartbeat(deps, "a", Stage.RENDER, 0), heartbeat(deps, "b", Stage.RENDER, 0):
        assert kept.wait(EVENT_TIMEOUT_S)
    assert calls.count("a") == 1  # refused once, never asked again
