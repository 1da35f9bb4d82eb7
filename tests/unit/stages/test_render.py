"""The render stage in process, against a fake ComfyUI behind `ComfyClient`'s calls."""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.adapters.comfy.job_files import remove_later
from app.adapters.comfy.messages import ComfyOutput
from app.adapters.comfy.previews import PreviewFrame
from app.adapters.comfy.tracker import RenderProgress
from app.core.errors import ComfyUnavailable, RenderFailed
from app.core.models import JobStatus, Stage, StatusDetail
from app.engine.pipeline import cancel_job, release_due
from app.engine.scratch import job_folder, outputs_folder
from app.stages import render
from tests.unit.stages.fakes import World, make_world, png_bytes
from tests.unit.stages.helpers import HOOK_URL, fetched, parked

IMAGE = png_bytes(5, 5)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    # ComfyUI names files after the run token (the prompt id's first 8 characters).
    runs = itertools.count()
    monkeypatch.setattr(
        render, "new_prompt_id", lambda: f"r0000000-0000-4000-8000-{next(runs):012d}"
    )
    world = make_world(tmp_path, comfyui_base_dir=str(tmp_path / "comfy"))
    world.comfy.outputs = [
        ComfyOutput(node_id="2", filename="r0000000-t_00001_.png", subfolder="j1", type="output")
    ]
    world.comfy.files = {"r0000000-t_00001_.png": IMAGE}
    return world


def test_inputs_go_up_the_graph_is_scoped_and_outputs_are_staged(world: World) -> None:
    fetched(world)
    world.step(Stage.RENDER)
    assert [(name, sub) for name, sub, _ in world.comfy.uploads] == [("face.png", "j1")]
    (call,) = world.comfy.runs
    assert call.graph["1"]["inputs"]["image"] == "j1/face.png"
    prefix = call.graph["2"]["inputs"]["filename_prefix"]
    assert prefix == f"j1/{call.prompt_id[:8]}-t"  # the client's "../" is gone
    job = world.job("j1")
    assert job.status is JobStatus.RUNNING and job.stage is Stage.UPLOAD
    assert job.progress == 1.0
    assert [(o.filename, o.size, o.key) for o in job.outputs] == [
        ("r0000000-t_00001_.png", len(IMAGE), "scratch:00-r0000000-t_00001_.png")
    ]
    assert (outputs_folder(world.deps, "j1") / "00-r0000000-t_00001_.png").read_bytes() == IMAGE
    assert world.queued(Stage.UPLOAD) == 1


PROGRESS = RenderProgress(0.5, "2", "SaveImage", 1, 2, 1, 2)


def test_progress_is_written_once_the_interval_has_passed_and_the_lease_left_alone(
    world: World,
) -> None:
    job = fetched(world)
    before = world.job("j1")
    beat = render.Heartbeat(world.deps, job)
    beat.on_progress(PROGRESS)
    assert world.job("j1").progress == 0.0  # within the interval: nothing written yet
    world.clock.advance(world.deps.settings.progress_interval_s)
    assert not beat.should_cancel()
    stored = world.job("j1")
    assert stored.progress == 0.5
    assert stored.progress_detail is not None and stored.progress_detail["node_id"] == "2"
    # The engine's heartbeat thread is the lease's one writer (app.engine.heartbeat).
    assert stored.lease_until == before.lease_until


def test_no_progress_news_writes_nothing_however_long_the_render(world: World) -> None:
    job = fetched(world)
    before = world.job("j1")
    beat = render.Heartbeat(world.deps, job)
    for _ in range(5):
        world.clock.advance(world.deps.settings.stage_lease_s)
        assert not beat.should_cancel()
    assert world.job("j1") == before


def test_a_cancel_is_noticed_at_the_first_check_after_the_interval(world: World) -> None:
    job = fetched(world)
    beat = render.Heartbeat(world.deps, job)
    cancel_job(world.deps, "j1")
    assert not beat.should_cancel()  # the pipeline read the record just before
    world.clock.advance(world.deps.settings.progress_interval_s)
    assert beat.should_cancel()


class CountingKV:
    """Counts every call made through a dict (each one a round trip on Modal)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def __getattr__(self, name: str) -> Any:
        self.calls += 1
        return getattr(self.inner, name)


def test_cancel_checks_and_progress_cost_at_most_one_call_per_render_second(
    world: World,
) -> None:
    job = fetched(world)
    counting = CountingKV(world.deps.jobs.jobs)
    world.deps.jobs.jobs = counting
    beat = render.Heartbeat(world.deps, job)
    for _ in range(600):  # a 60 s render: progress and a cancel poll every 0.1 s
        world.clock.advance(0.1)
        beat.on_progress(PROGRESS)
        beat.should_cancel()
    # Issue 12's goal: at most 1 call per render-second for cancel checks and progress.
    # The lease is not in it: the engine's heartbeat thread renews it for every stage
    # (issue 10): a fence read and a write per stage_lease_renew_s (10 s by default), so
    # +0.2 calls per render-second for a render, the same as for any other stage.
    assert 0 < counting.calls <= 60


def test_the_comfy_side_folders_are_wiped(world: World, tmp_path: Path) -> None:
    fetched(world)
    for kind in ("input", "output", "temp"):
        (tmp_path / "comfy" / kind / "j1").mkdir(parents=True)
    world.step(Stage.RENDER)
    assert not any(
        (tmp_path / "comfy" / kind / "j1").exists() for kind in ("input", "output", "temp")
    )


def test_a_local_comfyui_without_base_dir_is_wiped_where_it_says_its_folders_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(tmp_path)  # the local default: comfyui_base_dir unset
    base = tmp_path / "comfy-elsewhere"
    world.comfy.base_url = "http://127.0.0.1:8188"
    monkeypatch.setattr(
        world.comfy,
        "health",
        lambda: {"system": {"argv": ["main.py", "--base-directory", str(base)]}},
    )
    monkeypatch.setattr(render, "_FOUND_DIRS", {})  # nothing found yet for this URL
    fetched(world)
    for kind in ("input", "output", "temp"):
        (base / kind / "j1").mkdir(parents=True)
    preview = base / "temp" / "ComfyUI_temp_abcde_00001_.png"
    preview.write_bytes(IMAGE)
    world.comfy.outputs = [
        ComfyOutput(node_id="3", filename=preview.name, subfolder="", type="temp")
    ]
    world.comfy.files = {preview.name: IMAGE}
    world.step(Stage.RENDER)
    remove_later.settle()  # the folders are parked at once and deleted on a thread
    assert [o.filename for o in world.job("j1").outputs] == [preview.name]
    assert sorted(str(p.relative_to(base)) for p in base.rglob("*")) == ["input", "output", "temp"]


def test_files_comfyui_reports_outside_the_jobs_folder_are_not_collected(world: World) -> None:
    mine = world.comfy.outputs[0]
    theirs = ComfyOutput(
        node_id="2", filename="secret_00001_.png", subfolder="job_other", type="output"
    )
    unscoped = ComfyOutput(
        node_id="2", filename="r0000000-t_00002_.png", subfolder="", type="output"
    )
    world.comfy.outputs = [mine, theirs, unscoped]
    world.comfy.files = {**world.comfy.files, theirs.filename: b"A's secret"}
    fetched(world)
    world.step(Stage.RENDER)
    assert [o.filename for o in world.job("j1").outputs] == [mine.filename]


def test_comfy_down_parks_a_retry(world: World) -> None:
    fetched(world)
    world.comfy.error = ComfyUnavailable()
    world.step(Stage.RENDER)
    job = world.job("j1")
    # Queued again, saying why; its timeout is not used up while ComfyUI is down.
    assert job.status is JobStatus.QUEUED and job.lease_until is None
    assert job.status_detail() is StatusDetail.RENDERER_UNAVAILABLE
    assert [e.data for e in job.events if e.type == "status"] == [
        {"detail": "waiting_for_renderer"},
        {"detail": "renderer_unavailable", "retry_in_s": 2.0},
    ]
    assert [key.split(":", 1)[1] for key in parked(world)] == ["j1:render:0:1"]
    world.comfy.error = None
    world.clock.advance(2)
    assert release_due(world.deps) == 1
    world.step(Stage.RENDER)
    assert world.queued(Stage.UPLOAD) == 1
    assert len(world.comfy.runs) == 2
    first, second = world.comfy.runs
    assert first.prompt_id != second.prompt_id  # a fresh run token each attempt


def test_a_failing_node_fails_the_job_naming_it(world: World) -> None:
    fetched(world, webhook_url=HOOK_URL)
    world.comfy.error = RenderFailed(
        "ImageBlend: sizes differ", node_id="3", node_type="ImageBlend"
    )
    world.step(Stage.RENDER)
    job = world.job("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert (job.error.code, job.error.node_id, job.error.node_type) == (
        "render_failed",
        "3",
        "ImageBlend",
    )
    assert parked(world) == []
    assert world.queued(Stage.UPLOAD) == 0
    assert world.queued(Stage.NOTIFY) == 1


def test_a_cancel_during_the_run_is_noticed_and_stops_the_job(world: World) -> None:
    fetched(world)
    world.comfy.during_run = lambda: cancel_job(world.deps, "j1")
    world.step(Stage.RENDER)
    assert world.job("j1").status is JobStatus.CANCELLED
    assert parked(world) == []
    # Render reads no terminal decision after its work (issue 12): upload's claim does,
    # and drops the job with its scratch folder, storing nothing.
    assert world.queued(Stage.UPLOAD) == 1
    world.step(Stage.UPLOAD)
    assert world.job("j1").status is JobStatus.CANCELLED
    assert world.deps.jobs.claimed_at("j1", Stage.UPLOAD, 0) is None  # dropped unclaimed
    assert world.objects.objects == {}
    assert not job_folder(world.deps, "j1").exists()


def test_a_stopped_worker_abandons_the_prompt(world: World) -> None:
    job = fetched(world)
    world.comfy.error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        render.run(job, world.deps)
    prompt_id = world.comfy.runs[0].prompt_id
    assert world.comfy.abandoned == [f"delete:{prompt_id}", f"interrupt:{prompt_id}"]


def test_scope_outputs_puts_every_prefix_under_the_job() -> None:
    graph: dict[str, Any] = {
        "a": {"class_type": "SaveImage", "inputs": {"filename_prefix": "..\\x/../y"}},
        "b": {"class_type": "SaveImage", "inputs": {"filename_prefix": ".."}},
        "c": {"class_type": "Note", "inputs": {"text": "keep"}},
    }
    scoped = render.scope_outputs(graph, "j9", "tok")
    assert scoped["a"]["inputs"]["filename_prefix"] == "j9/tok-y"
    assert scoped["b"]["inputs"]["filename_prefix"] == "j9/tok-_"
    assert scoped["c"] == graph["c"]
    assert graph["a"]["inputs"]["filename_prefix"] == "..\\x/../y"  # the input is untouched


def test_abandoning_is_best_effort(world: World) -> None:
    job = fetched(world)
    world.comfy.error = KeyboardInterrupt()

    def unreachable(prompt_id: str) -> None:
        raise ComfyUnavailable()

    world.comfy.delete_pending = unreachable  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):  # the stop goes on; the failed clean-up is logged
        render.run(job, world.deps)


def test_progress_and_a_small_preview_ride_on_the_hand_off_write(world: World) -> None:
    fetched(world)
    frame = io.BytesIO()
    Image.new("RGB", (640, 480), (1, 2, 3)).save(frame, format="PNG")
    world.comfy.previews = [PreviewFrame("image/png", frame.getvalue(), "3")]
    world.step(Stage.RENDER)
    job = world.job("j1")
    kinds = [e.type for e in job.events]
    assert kinds[-3:] == ["status", "progress", "preview"], kinds
    assert job.status_detail() is None  # handed to upload
    progress = next(e.data for e in job.events if e.type == "progress")
    assert (progress["node_id"], progress["value"], progress["max"]) == ("2", 1, 2)
    preview = next(e.data for e in job.events if e.type == "preview")
    assert preview["node_id"] == "3" and preview["url"].startswith("data:image/jpeg;base64,")
