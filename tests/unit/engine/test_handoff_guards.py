"""The guards of `process_message` that keep an old message or an old holder harmless.

Each test breaks when its guard is deleted: without the ended-job guard the stage of a
finished job runs again; without the epoch fence a superseded (zombie) holder hands its
stale result to the next stage; without the completed check a last-stage holder that lost
the decision to its successor deletes the completed job's outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings
from app.core.models import Job, JobStatus, OutputRef, Stage
from app.engine.deps import Deps
from app.engine.pipeline import cancel_job, enqueue, process_message
from app.engine.scratch import job_folder
from app.store.backends.memory import MemoryBackend
from app.store.jobs import Limits
from tests.state_helpers import FakeClock, new_job


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    settings = Settings(data_dir=tmp_path / "data", stage_lease_s=100, stage_max_attempts=3)
    return Deps(settings=settings, backend=MemoryBackend(), clock=FakeClock())


def admit(deps: Deps, job_id: str = "j1") -> Job:
    job = deps.jobs.create(new_job(), job_id, Limits()).job
    enqueue(deps, job_id, Stage.FETCH)
    return job


def take(deps: Deps, stage: Stage) -> str:
    raw = deps.queue(stage).get()
    assert raw is not None
    return raw


def test_a_message_for_an_ended_job_runs_no_stage_and_changes_nothing(deps: Deps) -> None:
    # Given: a job cancelled while its fetch message was still queued, with scratch files
    admit(deps)
    cancel_job(deps, "j1")
    folder = job_folder(deps, "j1")
    folder.mkdir(parents=True)
    (folder / "input.png").write_bytes(b"x")
    before = deps.jobs.get("j1")
    decided = deps.jobs.terminal("j1")
    calls: list[str] = []

    def fetch(job: Job, deps: Deps) -> Job:
        calls.append(job.id)
        return job

    # When: the message arrives
    process_message(take(deps, Stage.FETCH), deps, {Stage.FETCH: fetch})
    # Then: the stage is not called, the record and the decision are as they were, no
    # message goes on, and the ended job's scratch files are removed
    assert calls == []
    assert deps.jobs.get("j1") == before
    assert deps.jobs.terminal("j1") == decided
    assert deps.queue(Stage.RENDER).len() == 0
    assert deps.jobs.claim_stage("j1", Stage.FETCH, 0)  # the message took no claim
    assert not folder.exists()


def test_a_superseded_holder_s_result_is_dropped(deps: Deps) -> None:
    # Given: a fetch holder whose lease the reaper gives to a new epoch while it still runs
    admit(deps)
    raw = take(deps, Stage.FETCH)
    seen: dict[str, Job] = {}

    def zombie_fetch(job: Job, deps: Deps) -> Job:
        assert deps.jobs.take_back(job.id, job.epoch) == 1  # as fail_stale does
        seen["after_take_back"] = deps.jobs.get(job.id)
        stale = OutputRef(
            filename="stale.png", content_type="image/png", size=1, key="outputs/j1/stale.png"
        )
        return job.model_copy(update={"outputs": [stale]})

    # When: the old holder finishes
    process_message(raw, deps, {Stage.FETCH: zombie_fetch})
    # Then: its result is dropped: nothing is saved and no next-stage message is sent
    assert deps.jobs.get("j1") == seen["after_take_back"]
    assert deps.jobs.get("j1").outputs == []
    assert deps.queue(Stage.RENDER).len() == 0
    assert deps.jobs.terminal("j1") is None


def uploading(deps: Deps) -> str:
    """A job past render, its upload message taken (epoch 0)."""
    admit(deps)
    for stage in (Stage.FETCH, Stage.RENDER):
        process_message(take(deps, stage), deps, {stage: lambda job, deps: job})
    return take(deps, Stage.UPLOAD)


def stored_output(deps: Deps, job: Job) -> OutputRef:
    key = f"outputs/t1/u1/{job.id}/00-a.png"
    size = deps.objects.put_bytes(key, b"png", "image/png")
    return OutputRef(filename="a.png", content_type="image/png", size=size, key=key)


def test_an_uploader_taken_back_keeps_what_its_successor_completed_the_job_with(
    deps: Deps,
) -> None:
    # Given: an upload holder taken back mid-work, whose successor stores the same key and
    # completes the job before the old holder ends
    raw = uploading(deps)

    def zombie_upload(job: Job, deps: Deps) -> Job:
        output = stored_output(deps, job)
        assert deps.jobs.take_back(job.id, job.epoch) == 1
        assert deps.jobs.complete(job.model_copy(update={"outputs": [output]}))
        return job.model_copy(update={"outputs": [output]})

    # When: the old holder ends and loses the terminal decision
    process_message(raw, deps, {Stage.UPLOAD: zombie_upload})
    # Then: the completed job's output is still stored (the last stage reads no fence:
    # deleting what it stored would delete the completed job's outputs)
    job = deps.jobs.get("j1")
    assert job.status is JobStatus.COMPLETED
    assert [o.key for o in job.outputs] == ["outputs/t1/u1/j1/00-a.png"]
    assert deps.objects.exists("outputs/t1/u1/j1/00-a.png")


def test_an_uploader_that_loses_to_a_cancel_deletes_what_it_stored(deps: Deps) -> None:
    raw = uploading(deps)

    def cancelled_upload(job: Job, deps: Deps) -> Job:
        output = stored_output(deps, job)
        cancel_job(deps, job.id)
        return job.model_copy(update={"outputs": [output]})

    process_message(raw, deps, {Stage.UPLOAD: cancelled_upload})
    assert deps.jobs.get("j1").status is JobStatus.CANCELLED
    assert not deps.objects.exists("outputs/t1/u1/j1/00-a.png")
