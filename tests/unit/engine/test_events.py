"""The job event log: recorded with the pipeline's writes, read back with derived events."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image

from app.adapters.comfy.previews import PreviewFrame, data_url, parse_frame
from app.core.config import Settings
from app.core.models import Job, JobEvent, JobStatus, OutputRef, Stage, StatusDetail
from app.engine.deps import Deps
from app.engine.events import (
    record_detail,
    record_event,
    record_started,
    stream_of,
)
from app.engine.pipeline import enqueue, note_renderer_unavailable, process_message
from app.store.backends.memory import MemoryBackend
from app.store.jobs import Limits
from tests.state_helpers import FakeClock, new_job


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    settings = Settings(data_dir=tmp_path / "data", events_max_progress=3)
    return Deps(settings=settings, backend=MemoryBackend(), clock=FakeClock())


def job(**update: object) -> Job:
    base = Job(id="j1", tenant_id="t", user_id="u", created_at=100.0, timeout_s=60)
    return base.model_copy(update=update)


def sign(out: OutputRef) -> str:
    return f"https://signed/{out.key}"


def test_ids_follow_queued_and_only_the_newest_progress_is_kept(deps: Deps) -> None:
    j = record_started(deps, job(), Stage.RENDER, 0)
    for step in range(6):
        j = record_event(deps, j, "progress", {"value": step, "max": 6})
    assert [e.id for e in j.events] == [2, 6, 7, 8] and j.event_seq == 8
    assert [e.data.get("value") for e in j.events if e.type == "progress"] == [3, 4, 5]
    stream = stream_of(j, sign)
    assert [e.id for e in stream] == [1, 2, 6, 7, 8] and stream[0].type == "queued"


def test_started_once_per_stage_and_status_only_when_it_changes(deps: Deps) -> None:
    j = record_started(deps, job(), Stage.RENDER, 0)
    j = record_started(deps, j, Stage.RENDER, 1)  # a retry
    j = record_detail(deps, j, StatusDetail.RENDERER_UNAVAILABLE)
    j = record_detail(deps, j, StatusDetail.RENDERER_UNAVAILABLE)
    assert [e.type for e in j.events] == ["started", "status"]


def test_a_completed_job_ends_with_its_outputs_then_one_terminal_event(deps: Deps) -> None:
    out = OutputRef(filename="a.png", content_type="image/png", size=3, key="k/a.png")
    j = record_started(deps, job(), Stage.UPLOAD, 0)
    decided = deps.clock() + 1
    late = JobEvent(id=3, type="progress", at=decided + 5)  # written after the decision
    done = j.model_copy(
        update={
            "status": JobStatus.COMPLETED,
            "finished_at": decided,
            "outputs": [out],
            "events": [*j.events, late],
        }
    )
    stream = stream_of(done, sign)
    assert [(e.id, e.type) for e in stream] == [
        (1, "queued"),
        (2, "started"),
        (3, "output"),
        (4, "completed"),
    ]
    assert stream[2].data["url"] == "https://signed/k/a.png"


def test_the_pipeline_records_started_and_waiting_for_renderer(deps: Deps) -> None:
    deps.jobs.create(new_job(), "j1", Limits())
    enqueue(deps, "j1", Stage.FETCH)
    raw = deps.queue(Stage.FETCH).get()
    assert raw is not None
    process_message(raw, deps, {Stage.FETCH: lambda j, d: j})
    saved = deps.jobs.get("j1")
    assert [(e.type, e.data.get("stage") or e.data.get("detail")) for e in saved.events] == [
        ("started", "fetch"),
        ("status", "waiting_for_renderer"),
    ]
    assert saved.status_detail() is StatusDetail.WAITING_FOR_RENDERER
    # ComfyUI down when a render worker takes the message: said once, job queued.
    message = deps.queue(Stage.RENDER).get()
    assert message is not None
    note_renderer_unavailable(deps, message)
    note_renderer_unavailable(deps, message)
    down = deps.jobs.get("j1")
    assert down.status is JobStatus.QUEUED
    assert down.status_detail() is StatusDetail.RENDERER_UNAVAILABLE
    assert [e.type for e in down.events] == ["started", "status", "status"]


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


def test_preview_frames_of_both_kinds_are_read_and_made_small() -> None:
    plain = parse_frame(struct.pack(">II", 1, 2) + png((1024, 768)))
    assert plain is not None and plain.content_type == "image/png"
    meta = b'{"node_id": "3", "image_type": "image/png"}'
    tagged = parse_frame(struct.pack(">II", 4, len(meta)) + meta + png((8, 8)))
    assert tagged is not None and tagged.node_id == "3"
    assert parse_frame(struct.pack(">II", 3, 0)) is None
    url = data_url(plain, max_px=64, max_bytes=4096)
    assert url is not None and url.startswith("data:image/jpeg;base64,")
    assert len(url) < 4096 * 4 / 3 + 40
    assert data_url(PreviewFrame("image/png", b"not an image"), 64, 4096) is None
