"""Stage hand-offs, retries, terminal decisions and the reaper, with fake stage functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from app.core.errors import AlreadyTerminal, RenderFailed, TransientError
from app.core.models import InputSpec, Job, JobStatus, Stage, StageMessage
from app.engine.deps import Deps
from app.engine.maintenance import fail_stale, recover_after_restart, sweep
from app.engine.pipeline import cancel_job, enqueue, process_message
from app.store.backends.memory import MemoryBackend
from app.store.jobs import Limits
from app.store.keys import DELAYED_DICT, PENDING_DICT
from tests.state_helpers import FakeClock, new_job


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    settings = Settings(data_dir=tmp_path / "data", stage_lease_s=100, stage_max_attempts=3)
    return Deps(settings=settings, backend=MemoryBackend(), clock=FakeClock())


def admit(deps: Deps, job_id: str = "j1", **overrides: Any) -> Job:
    """A job with one input, so it starts at fetch (a job without inputs skips it)."""
    values: dict[str, Any] = {"inputs": [InputSpec(name="a.png", url="https://x.example/a.png")]}
    values.update(overrides)
    job = deps.jobs.create(new_job(**values), job_id, Limits()).job
    enqueue(deps, job_id, Stage.FETCH)
    return job


def ok(job: Job, deps: Deps) -> Job:
    return job


def run_queue(deps: Deps, stage: Stage, fns: dict[Stage, Callable[[Job, Deps], Job]]) -> int:
    done = 0
    while (raw := deps.queue(stage).get()) is not None:
        process_message(raw, deps, fns)
        done += 1
    return done


ALL_OK: dict[Stage, Callable[[Job, Deps], Job]] = {
    Stage.FETCH: ok,
    Stage.RENDER: ok,
    Stage.UPLOAD: ok,
}


def test_a_job_walks_fetch_render_upload_and_completes(deps: Deps) -> None:
    admit(deps)
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    for stage in (Stage.FETCH, Stage.RENDER, Stage.UPLOAD):
        clock.advance(1)
        assert run_queue(deps, stage, ALL_OK) == 1
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.COMPLETED
    assert all(job.stage_times[s].finished_at for s in (Stage.FETCH, Stage.RENDER, Stage.UPLOAD))
    assert list(deps.jobs.active_ids()) == []
    assert deps.queue(Stage.NOTIFY).len() == 0  # no webhook asked for


def test_a_job_with_a_webhook_gets_one_notify_message(deps: Deps) -> None:
    admit(deps, webhook_url="https://hooks.example.com/x")
    for stage in (Stage.FETCH, Stage.RENDER, Stage.UPLOAD):
        run_queue(deps, stage, ALL_OK)
    assert deps.queue(Stage.NOTIFY).len() == 1
    assert deps.backend.kv(PENDING_DICT).contains("j1")


def test_duplicate_message_runs_the_stage_once(deps: Deps) -> None:
    admit(deps)
    enqueue(deps, "j1", Stage.FETCH)  # a duplicate, as a sweep re-send could make
    calls: list[str] = []

    def counting(job: Job, deps: Deps) -> Job:
        calls.append(job.id)
        return job

    run_queue(deps, Stage.FETCH, {**ALL_OK, Stage.FETCH: counting})
    assert calls == ["j1"]
    assert deps.queue(Stage.RENDER).len() == 1


def test_permanent_error_fails_the_job_with_its_code_and_node(deps: Deps) -> None:
    admit(deps, webhook_url="https://hooks.example.com/x")

    def boom(job: Job, deps: Deps) -> Job:
        exc = RenderFailed("ImageBlend: RuntimeError: sizes differ")
        exc.node_id, exc.node_type = "3", "ImageBlend"
        raise exc

    run_queue(deps, Stage.FETCH, ALL_OK)
    run_queue(deps, Stage.RENDER, {**ALL_OK, Stage.RENDER: boom})
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert (job.error.code, job.error.node_id, job.error.node_type) == (
        "render_failed",
        "3",
        "ImageBlend",
    )
    assert deps.queue(Stage.UPLOAD).len() == 0
    assert deps.queue(Stage.NOTIFY).len() == 1


def test_unexpected_exception_fails_the_job_without_leaking_it(deps: Deps) -> None:
    admit(deps)

    def bug(job: Job, deps: Deps) -> Job:
        raise KeyError("secret internal detail")

    run_queue(deps, Stage.FETCH, {**ALL_OK, Stage.FETCH: bug})
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.FAILED
    assert job.error is not None and "secret" not in job.error.message
    assert job.error.code == "internal_error"


def test_transient_error_is_retried_later_then_gives_up(deps: Deps) -> None:
    admit(deps)
    clock: FakeClock = deps.clock  # type: ignore[assignment]

    def down(job: Job, deps: Deps) -> Job:
        raise TransientError()  # (ComfyUI down is waited out instead: test_renderer_wait)

    run_queue(deps, Stage.FETCH, ALL_OK)
    fns = {**ALL_OK, Stage.RENDER: down}
    for _ in range(2):
        run_queue(deps, Stage.RENDER, fns)
        assert deps.jobs.get("j1").status is JobStatus.RUNNING
        assert deps.queue(Stage.RENDER).len() == 0  # parked, not busy-looping
        assert sweep(deps)["released"] == 0  # not due yet
        clock.advance(10)
        assert sweep(deps)["released"] == 1
    run_queue(deps, Stage.RENDER, fns)  # third attempt of three
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "transient_error"


def test_cancel_during_a_stage_stops_the_hand_off(deps: Deps) -> None:
    admit(deps)

    def cancelled_meanwhile(job: Job, deps: Deps) -> Job:
        cancel_job(deps, job.id)
        return job

    run_queue(deps, Stage.FETCH, {**ALL_OK, Stage.FETCH: cancelled_meanwhile})
    assert deps.jobs.get("j1").status is JobStatus.CANCELLED
    assert deps.queue(Stage.RENDER).len() == 0
    with pytest.raises(AlreadyTerminal):
        cancel_job(deps, "j1")


def test_messages_for_ended_jobs_are_dropped(deps: Deps) -> None:
    admit(deps)
    cancel_job(deps, "j1")
    assert run_queue(deps, Stage.FETCH, {}) == 1  # consumed without calling any stage


def test_malformed_and_unknown_messages_are_dropped(deps: Deps) -> None:
    process_message("not json", deps, ALL_OK)
    process_message(StageMessage(job_id="nope", stage=Stage.FETCH).model_dump_json(), deps, ALL_OK)


def test_fail_stale_takes_back_a_job_whose_worker_died(deps: Deps) -> None:
    admit(deps)
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    raw = deps.queue(Stage.FETCH).get()
    assert raw is not None

    def dies(job: Job, deps: Deps) -> Job:
        raise SystemExit  # the worker process is gone mid-stage

    with pytest.raises(SystemExit):
        process_message(raw, deps, {Stage.FETCH: dies})
    assert fail_stale(deps)["taken_back"] == 0  # lease still valid
    clock.advance(101)
    assert fail_stale(deps)["taken_back"] == 1
    job = deps.jobs.get("j1")
    assert job.epoch == 1 and job.lease_until is None
    # The new epoch's message runs; a zombie of epoch 0 could no longer hand off.
    assert not deps.jobs.is_current("j1", 0)
    run_queue(deps, Stage.FETCH, ALL_OK)
    assert deps.queue(Stage.RENDER).len() == 1


def test_fail_stale_fails_a_job_past_its_deadline(deps: Deps) -> None:
    admit(deps, timeout_s=30)
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    clock.advance(30 + 61)
    assert fail_stale(deps)["timed_out"] == 1
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "timeout"


def test_fail_stale_resends_a_message_lost_from_the_queue(deps: Deps) -> None:
    admit(deps)
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    deps.queue(Stage.FETCH).get()  # lost: taken and never processed, no claim
    clock.advance(301)
    assert fail_stale(deps)["requeued"] == 1
    assert run_queue(deps, Stage.FETCH, ALL_OK) == 1
    assert deps.queue(Stage.RENDER).len() == 1


def test_fail_stale_does_not_resend_while_the_queue_has_a_backlog(deps: Deps) -> None:
    admit(deps, "j1")
    admit(deps, "j2")
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    clock.advance(301)
    assert fail_stale(deps)["requeued"] == 0
    assert deps.queue(Stage.FETCH).len() == 2


def test_fail_stale_resends_a_lost_message_under_a_sustained_backlog(deps: Deps) -> None:
    admit(deps, "j1", timeout_s=3600)
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    deps.queue(Stage.FETCH).get()  # j1's message is lost ...
    deps.queue(Stage.FETCH).put_many(["backlog"] * 3)  # ... while the queue never empties
    clock.advance(deps.settings.requeue_under_backlog_after_s - 1)
    assert fail_stale(deps)["requeued"] == 0
    clock.advance(2)
    assert fail_stale(deps)["requeued"] == 1
    assert deps.queue(Stage.FETCH).len() == 4


def test_a_job_lost_too_often_fails(deps: Deps) -> None:
    admit(deps, timeout_s=3600)
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    for _ in range(3):
        deps.queue(Stage.FETCH).get()
        clock.advance(301)
        fail_stale(deps)
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "stage_lost"


def test_restart_recovery_requeues_jobs_held_by_dead_workers(deps: Deps) -> None:
    admit(deps)
    raw = deps.queue(Stage.FETCH).get()
    assert raw is not None
    with pytest.raises(SystemExit):
        process_message(raw, deps, {Stage.FETCH: lambda j, d: (_ for _ in ()).throw(SystemExit)})
    assert recover_after_restart(deps) == 1
    assert deps.queue(Stage.FETCH).len() == 1


def test_parked_messages_move_once_when_due(deps: Deps) -> None:
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    enqueue(deps, "j1", Stage.NOTIFY, attempt=1, not_before=clock.now + 5)
    assert deps.queue(Stage.NOTIFY).len() == 0
    assert len(list(deps.backend.kv(DELAYED_DICT).keys())) == 1
    clock.advance(5)
    assert sweep(deps)["released"] == 1
    assert sweep(deps)["released"] == 0
    assert deps.queue(Stage.NOTIFY).len() == 1


def test_sweep_wakes_stages_with_work(deps: Deps) -> None:
    woken: list[Stage] = []
    deps.waker = woken.append
    admit(deps)
    woken.clear()
    report = sweep(deps)
    assert report["fetch"] == 1 and woken == [Stage.FETCH]
