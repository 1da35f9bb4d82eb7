"""The upload stage in process, into the in-memory object store."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from app.adapters.comfy.messages import ComfyOutput
from app.adapters.storage.base import output_key
from app.core.errors import StorageUnavailable
from app.core.models import Job, JobStatus, OutputRef, Stage
from app.engine.pipeline import cancel_job, release_due
from app.engine.scratch import job_folder, outputs_folder
from app.engine.views import present
from app.stages import render, upload
from tests.unit.stages.fakes import World, make_world, png_bytes
from tests.unit.stages.helpers import HOOK_URL, fetched, parked

IMAGE = png_bytes(6, 6)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # ComfyUI names files after the run token (the prompt id's first 8 characters).
    runs = itertools.count()
    monkeypatch.setattr(
        render, "new_prompt_id", lambda: f"r0000000-0000-4000-8000-{next(runs):012d}"
    )
    world = make_world(tmp_path)
    world.comfy.outputs = [
        ComfyOutput(node_id="2", filename="r0000000-t-1.png", subfolder="j1", type="output"),
        ComfyOutput(node_id="2", filename="r0000000-t-2.bin", subfolder="j1", type="output"),
    ]
    world.comfy.files = {"r0000000-t-1.png": IMAGE, "r0000000-t-2.bin": b"\x00\x01raw"}
    return world


def rendered(world: World, **overrides: Any) -> None:
    fetched(world, **overrides)
    world.step(Stage.RENDER)
    assert world.queued(Stage.UPLOAD) == 1


def test_outputs_are_stored_under_tenant_user_job_keys_and_the_job_completes(world: World) -> None:
    rendered(world, webhook_url=HOOK_URL)
    world.step(Stage.UPLOAD)
    job = world.job("j1")
    assert job.status is JobStatus.COMPLETED
    first = output_key("t1", "u1", "j1", 0, "r0000000-t-1.png")
    second = output_key("t1", "u1", "j1", 1, "r0000000-t-2.bin")
    assert first == "outputs/t1/u1/j1/00-r0000000-t-1.png"
    assert [(o.key, o.content_type, o.size) for o in job.outputs] == [
        (first, "image/png", len(IMAGE)),
        (second, "application/octet-stream", 5),
    ]
    assert world.objects.objects[first].data == IMAGE
    assert world.objects.objects[first].content_type == "image/png"
    assert world.objects.objects[second].data == b"\x00\x01raw"
    assert not job_folder(world.deps, "j1").exists()  # scratch gone once the job ended
    assert world.queued(Stage.NOTIFY) == 1
    assert world.deps.deliveries.pending.contains("j1")


def test_outputs_stored_by_an_earlier_attempt_are_kept(world: World) -> None:
    rendered(world)
    job = world.job("j1")
    done = OutputRef(filename="r0000000-t-1.png", content_type="image/png", size=1, key="outputs/x")
    job = job.model_copy(update={"outputs": [done, job.outputs[1]]})
    result = upload.run(job, world.deps)
    assert result.outputs[0] == done
    assert result.outputs[1].key == output_key("t1", "u1", "j1", 1, "r0000000-t-2.bin")
    assert "outputs/x" not in world.objects.objects


def test_an_output_staged_in_the_old_outputs_folder_is_still_stored(world: World) -> None:
    # Staged before outputs went into the job folder itself: `scratch:outputs/NN-name`.
    rendered(world)
    job = world.job("j1")
    folder = job_folder(world.deps, "j1")
    (folder / "outputs").mkdir()
    (folder / "00-r0000000-t-1.png").rename(folder / "outputs" / "00-r0000000-t-1.png")
    old = job.outputs[0].model_copy(update={"key": "scratch:outputs/00-r0000000-t-1.png"})
    result = upload.run(job.model_copy(update={"outputs": [old, job.outputs[1]]}), world.deps)
    key = output_key("t1", "u1", "j1", 0, "r0000000-t-1.png")
    assert result.outputs[0].key == key
    assert world.objects.objects[key].data == IMAGE


def test_a_missing_staged_file_fails_the_job(world: World) -> None:
    rendered(world)
    (outputs_folder(world.deps, "j1") / "00-r0000000-t-1.png").unlink()
    world.step(Stage.UPLOAD)
    job = world.job("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "upload_failed"
    assert world.objects.objects == {}


def test_storage_down_parks_a_retry_that_then_stores_everything(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered(world)
    real = world.objects.put_file
    failures = [StorageUnavailable("S3 answered 503")]

    def flaky(key: str, path: Path, content_type: str) -> int:
        if failures:
            raise failures.pop()
        return real(key, path, content_type)

    monkeypatch.setattr(world.objects, "put_file", flaky)
    world.step(Stage.UPLOAD)
    assert world.job("j1").status is JobStatus.RUNNING
    assert [key.split(":", 1)[1] for key in parked(world)] == ["j1:upload:0:1"]
    world.clock.advance(2)
    release_due(world.deps)
    world.step(Stage.UPLOAD)
    job = world.job("j1")
    assert job.status is JobStatus.COMPLETED
    assert sorted(world.objects.objects) == sorted(o.key for o in job.outputs)


def test_a_storage_outage_longer_than_the_stage_attempts_is_ridden_out(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five failed uploads in a row (a full disk for ~30 s): retried with back-off, then stored."""
    rendered(world)
    real = world.objects.put_file
    outage = [StorageUnavailable("could not store: No space left on device")] * 5

    def full_disk(key: str, path: Path, content_type: str) -> int:
        if outage:
            raise outage.pop()
        return real(key, path, content_type)

    monkeypatch.setattr(world.objects, "put_file", full_disk)
    for _ in range(5):
        world.step(Stage.UPLOAD)
        assert world.job("j1").status is JobStatus.RUNNING
        world.clock.advance(64)
        release_due(world.deps)
    world.step(Stage.UPLOAD)
    job = world.job("j1")
    assert job.status is JobStatus.COMPLETED
    assert sorted(world.objects.objects) == sorted(o.key for o in job.outputs)


def test_a_cancel_during_upload_leaves_no_stored_output_and_the_view_lists_none(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered(world)
    real = world.objects.put_file

    def cancel_after_first(key: str, path: Path, content_type: str) -> int:
        size = real(key, path, content_type)
        cancel_job(world.deps, "j1")  # the client cancels while the outputs go up
        return size

    monkeypatch.setattr(world.objects, "put_file", cancel_after_first)
    world.step(Stage.UPLOAD)
    job = world.job("j1")
    assert job.status is JobStatus.CANCELLED
    assert world.objects.objects == {}  # the output stored before the cancel is gone
    assert job.outputs == []
    assert present(world.deps, job).outputs == []


def test_a_cancel_right_after_the_last_upload_check_keeps_no_output(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered(world)
    real_complete = world.deps.jobs.complete

    def cancel_at_the_hand_off(job: Job) -> bool:
        # Upload's own checks saw a live job; the cancel lands just before `complete`
        # (put-if-absent), which then loses to it.
        cancel_job(world.deps, job.id)
        return real_complete(job)

    monkeypatch.setattr(world.deps.jobs, "complete", cancel_at_the_hand_off)
    world.step(Stage.UPLOAD)
    job = world.job("j1")
    assert job.status is JobStatus.CANCELLED
    assert world.objects.objects == {}
    assert job.outputs == []  # the record has them, the cancelled view does not
