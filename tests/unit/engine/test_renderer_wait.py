"""Waiting for a renderer is bounded by its own limit, not by the job's timeout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.config import Settings
from app.core.errors import ComfyUnavailable
from app.core.models import Job, JobStatus, Stage, StatusDetail
from app.engine.deps import Deps
from app.engine.maintenance import fail_stale, sweep
from app.engine.pipeline import enqueue, process_message
from app.store.backends.memory import MemoryBackend
from app.store.jobs import Limits
from tests.state_helpers import FakeClock, new_job

StageFns = dict[Stage, Callable[[Job, Deps], Job]]


def ok(job: Job, deps: Deps) -> Job:
    return job


ALL_OK: StageFns = {Stage.FETCH: ok, Stage.RENDER: ok, Stage.UPLOAD: ok}


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    settings = Settings(data_dir=tmp_path / "data", render_queue_wait_limit_s=600)
    return Deps(settings=settings, backend=MemoryBackend(), clock=FakeClock())


def clock_of(deps: Deps) -> FakeClock:
    clock = deps.clock
    assert isinstance(clock, FakeClock)
    return clock


def run(deps: Deps, stage: Stage, fns: StageFns = ALL_OK) -> int:
    done = 0
    while (raw := deps.queue(stage).get()) is not None:
        process_message(raw, deps, fns)
        done += 1
    return done


def fetched(deps: Deps, timeout_s: int = 60) -> None:
    deps.jobs.create(new_job(timeout_s=timeout_s), "j1", Limits())
    enqueue(deps, "j1", Stage.FETCH)
    assert run(deps, Stage.FETCH) == 1
    assert deps.queue(Stage.RENDER).len() == 1


def test_a_job_queued_behind_a_busy_or_down_renderer_keeps_its_own_timeout(deps: Deps) -> None:
    fetched(deps, timeout_s=60)
    clock = clock_of(deps)
    for _ in range(12):  # 6 minutes in the render queue: far past the 60 s timeout
        clock.advance(30)
        report = fail_stale(deps)
        assert report["timed_out"] == 0
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.RUNNING and job.renderer_wait_at(clock()) == 360
    assert run(deps, Stage.RENDER) == 1
    job = deps.jobs.get("j1")
    assert job.renderer_wait_s == 360 and job.deadline == job.created_at + 60 + 360
    assert run(deps, Stage.UPLOAD) == 1
    assert deps.jobs.get("j1").status is JobStatus.COMPLETED


def test_a_renderer_wait_past_its_limit_fails_with_queue_wait_timeout(deps: Deps) -> None:
    fetched(deps, timeout_s=3600)
    clock_of(deps).advance(601)
    assert fail_stale(deps)["timed_out"] == 1
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "queue_wait_timeout"


def test_the_jobs_own_work_still_times_out_with_timeout(deps: Deps) -> None:
    fetched(deps, timeout_s=60)
    clock = clock_of(deps)
    raw = deps.queue(Stage.RENDER).get()
    assert raw is not None

    def hangs(job: Job, deps: Deps) -> Job:
        raise SystemExit  # a render that never comes back (its lease keeps being renewed)

    with pytest.raises(SystemExit):
        process_message(raw, deps, {Stage.RENDER: hangs})
    deps.jobs.renew_lease("j1", Stage.RENDER, 0, clock() + 3600)
    clock.advance(60 + 61)
    assert fail_stale(deps)["timed_out"] == 1
    job = deps.jobs.get("j1")
    assert job.error is not None and job.error.code == "timeout"


def test_comfyui_down_is_waited_out_without_using_up_attempts(deps: Deps) -> None:
    fetched(deps, timeout_s=60)
    clock = clock_of(deps)
    comfy_up = {"value": False}

    def render(job: Job, deps: Deps) -> Job:
        if not comfy_up["value"]:
            raise ComfyUnavailable()
        return job

    fns = {**ALL_OK, Stage.RENDER: render}
    for _ in range(6):  # twice stage_max_attempts: still waiting, visibly
        assert run(deps, Stage.RENDER, fns) == 1
        job = deps.jobs.get("j1")
        # Queued again, and saying why (not "running render 0%").
        assert job.status is JobStatus.QUEUED and job.stage is Stage.RENDER
        assert job.status_detail() is StatusDetail.RENDERER_UNAVAILABLE
        clock.advance(30)
        assert fail_stale(deps)["timed_out"] == 0
        sweep(deps)
    comfy_up["value"] = True
    assert run(deps, Stage.RENDER, fns) == 1
    assert run(deps, Stage.UPLOAD) == 1
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.COMPLETED
    assert job.renderer_wait_s >= 180


def test_comfyui_down_past_the_limit_fails_with_queue_wait_timeout(deps: Deps) -> None:
    fetched(deps, timeout_s=3600)
    clock = clock_of(deps)

    def down(job: Job, deps: Deps) -> Job:
        raise ComfyUnavailable()

    fns = {**ALL_OK, Stage.RENDER: down}
    while not deps.jobs.get("j1").is_terminal:
        run(deps, Stage.RENDER, fns)
        clock.advance(30)
        sweep(deps)
    job = deps.jobs.get("j1")
    assert job.error is not None and job.error.code == "queue_wait_timeout"
    assert clock() - job.created_at < 700
