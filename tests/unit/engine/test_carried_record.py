"""Hand-offs carry the job record (issue 12): the next stage does not read it back, an old
message does not trust it, and the last stage writes only the terminal decision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.config import Settings
from app.core.models import Job, JobStatus, Stage, StageMessage, StatusDetail
from app.engine.deps import Deps
from app.engine.pipeline import (
    CARRIED_MAX_AGE_S,
    hand_off,
    note_renderer_unavailable,
    process_message,
)
from app.store.backends.memory import MemoryBackend
from app.store.jobs import Limits
from app.store.keys import job_key, released_key
from tests.state_helpers import FakeClock, new_job

StageFns = dict[Stage, Callable[[Job, Deps], Job]]


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    settings = Settings(data_dir=tmp_path / "data", stage_lease_s=100)
    return Deps(settings=settings, backend=MemoryBackend(), clock=FakeClock())


def handed_to_render(deps: Deps, job_id: str = "j1") -> Job:
    """An admitted job without inputs, handed to render as intake does."""
    admission = deps.jobs.create(new_job(), job_id, Limits(max_active_per_user=2))
    assert hand_off(deps, admission.job, Stage.RENDER, request=admission.request)
    return admission.job


def record_reads(deps: Deps, job_id: str) -> list[str]:
    """Every read of the job's record from now on (the store's `get` of its key)."""
    reads: list[str] = []
    kv = deps.jobs.jobs
    inner = kv.get

    def get(key: str) -> str | None:
        if key == job_key(job_id):
            reads.append(key)
        return inner(key)

    kv.get = get  # type: ignore[method-assign]
    return reads


def seen_by(fns: StageFns, stage: Stage) -> tuple[StageFns, list[Job]]:
    seen: list[Job] = []

    def record(job: Job, deps: Deps) -> Job:
        seen.append(job)
        return job

    return {**fns, stage: record}, seen


ALL_OK: StageFns = {stage: (lambda job, deps: job) for stage in Stage}


def test_render_takes_the_record_and_request_from_the_message(deps: Deps) -> None:
    handed_to_render(deps)
    reads = record_reads(deps, "j1")
    workflows: list[dict[str, object]] = []

    def render(job: Job, deps: Deps) -> Job:
        workflows.append(deps.jobs.workflow(job.id))
        return job

    raw = deps.queue(Stage.RENDER).get()
    assert raw is not None
    process_message(raw, deps, {**ALL_OK, Stage.RENDER: render})
    assert reads == []  # the message had it
    assert workflows and workflows[0] == new_job().workflow
    assert deps.queue(Stage.UPLOAD).len() == 1


def test_a_message_older_than_the_bound_reads_the_stored_record(deps: Deps) -> None:
    handed_to_render(deps)
    stored = deps.jobs.get("j1").model_copy(update={"metadata": {"written": "later"}})
    deps.jobs.save(stored)  # what only an old message could have missed
    clock: FakeClock = deps.clock  # type: ignore[assignment]
    clock.advance(CARRIED_MAX_AGE_S + 1)
    fns, seen = seen_by(ALL_OK, Stage.RENDER)
    raw = deps.queue(Stage.RENDER).get()
    assert raw is not None
    process_message(raw, deps, fns)
    assert [job.metadata for job in seen] == [{"written": "later"}]


def test_a_fresh_message_is_run_from_its_own_record(deps: Deps) -> None:
    handed_to_render(deps)
    fns, seen = seen_by(ALL_OK, Stage.RENDER)
    raw = deps.queue(Stage.RENDER).get()
    assert raw is not None
    message = StageMessage.model_validate_json(raw)
    assert message.record is not None and message.request is not None
    carried = Job.model_validate_json(message.record)
    process_message(raw, deps, fns)
    assert [job.id for job in seen] == [carried.id]
    assert seen[0].created_at == carried.created_at


def test_a_message_put_back_while_comfyui_is_down_drops_its_record(deps: Deps) -> None:
    handed_to_render(deps)
    raw = deps.queue(Stage.RENDER).get()
    assert raw is not None
    back = note_renderer_unavailable(deps, raw)
    assert StageMessage.model_validate_json(back).record is None
    fns, seen = seen_by(ALL_OK, Stage.RENDER)
    process_message(back, deps, fns)
    # The next holder starts from the record that says why it waited.
    assert seen and StatusDetail.RENDERER_UNAVAILABLE.value in [
        event.data.get("detail") for event in seen[0].events if event.type == "status"
    ]


def test_completion_writes_only_the_decision_and_frees_both_places(deps: Deps) -> None:
    deps.jobs.create(new_job(), "j0", Limits(max_active_per_user=2, max_active_per_tenant=3))
    admission = deps.jobs.create(
        new_job(), "j1", Limits(max_active_per_user=2, max_active_per_tenant=3)
    )
    assert hand_off(deps, admission.job, Stage.RENDER, request=admission.request)
    for stage in (Stage.RENDER, Stage.UPLOAD):
        raw = deps.queue(stage).get()
        assert raw is not None
        process_message(raw, deps, ALL_OK)
    raw_record = deps.jobs.jobs.get(job_key("j1"))
    assert raw_record is not None
    assert Job.model_validate_json(raw_record).stage_times[Stage.UPLOAD].finished_at is None
    done = deps.jobs.get("j1")
    assert done.status is JobStatus.COMPLETED
    assert done.stage_times[Stage.UPLOAD].finished_at is not None  # from the decision
    slots = admission.job.slots
    assert len(slots) == 2
    for ref in slots:
        assert deps.jobs.slots.contains(released_key(ref.scope, ref.index, ref.generation))
    # Both places are free again: j0 still holds one of each, so a cap of 2 admits one more.
    again = deps.jobs.create(new_job(), "j2", Limits(max_active_per_user=2))
    assert [ref.index for ref in again.job.slots] == [slots[0].index]
