"""The fetch stage in process: inputs downloaded with the safe client and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.adapters.media import MediaInfo, check_media
from app.adapters.net.safe_client import DownloadResult
from app.core.errors import FetchUnavailable, StageCancelled, UrlRefused
from app.core.models import InputSpec, JobStatus, Stage
from app.engine.pipeline import cancel_job, release_due
from app.engine.scratch import inputs_folder
from app.stages import fetch
from tests.unit.stages.fakes import World, make_world, png_bytes
from tests.unit.stages.helpers import HOOK_URL, PHOTO_URL, admit, parked

OTHER_URL = "https://images.example.com/hand.png"


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, fetch_max_bytes=1_000_000, fetch_timeout_s=7, fetch_max_redirects=2)


def two_inputs() -> list[InputSpec]:
    return [InputSpec(name="face.png", url=PHOTO_URL), InputSpec(name="hand.png", url=OTHER_URL)]


def test_every_input_lands_in_the_scratch_folder_and_render_is_next(world: World) -> None:
    admit(world, inputs=two_inputs())
    world.http.sites = {PHOTO_URL: png_bytes(), OTHER_URL: png_bytes(3, 2)}
    assert world.step(Stage.FETCH) == 1
    folder = inputs_folder(world.deps, "j1")
    assert (folder / "face.png").read_bytes() == png_bytes()
    assert (folder / "hand.png").read_bytes() == png_bytes(3, 2)
    calls = [
        (d.url, d.dest, d.max_bytes, d.timeout_s, d.max_redirects) for d in world.http.downloads
    ]
    assert calls == [
        (PHOTO_URL, folder / "face.png", 1_000_000, 7, 2),
        (OTHER_URL, folder / "hand.png", 1_000_000, 7, 2),
    ]
    job = world.job("j1")
    assert job.status is JobStatus.RUNNING and job.stage is Stage.RENDER
    assert job.stage_times[Stage.FETCH].finished_at == world.clock.now
    assert world.queued(Stage.RENDER) == 1


def test_run_returns_the_job_unchanged(world: World) -> None:
    job = admit(world)
    world.http.sites[PHOTO_URL] = png_bytes()
    assert fetch.run(job, world.deps) == job


def test_a_file_that_is_not_media_fails_the_job(world: World) -> None:
    admit(world, webhook_url=HOOK_URL)
    world.http.sites[PHOTO_URL] = b"<html>not an image</html>"
    world.step(Stage.FETCH)
    job = world.job("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "fetch_failed"
    assert world.queued(Stage.RENDER) == 0
    assert world.queued(Stage.NOTIFY) == 1  # the webhook goes out
    assert not inputs_folder(world.deps, "j1").exists()  # scratch removed with the job


def test_a_refused_url_fails_the_job_without_retry(world: World) -> None:
    admit(world)
    world.http.sites[PHOTO_URL] = UrlRefused("203.0.113.7 is not allowed")
    world.step(Stage.FETCH)
    job = world.job("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "url_refused"
    assert parked(world) == []


def test_a_server_down_for_now_parks_a_retry_that_then_succeeds(world: World) -> None:
    admit(world)
    world.http.sites[PHOTO_URL] = FetchUnavailable("HTTP 503")
    world.step(Stage.FETCH)
    job = world.job("j1")
    assert job.status is JobStatus.RUNNING and job.lease_until is None
    assert world.queued(Stage.FETCH) == 0
    assert [key.split(":", 1)[1] for key in parked(world)] == ["j1:fetch:0:1"]
    assert release_due(world.deps) == 0  # backoff of 2 s not over
    world.clock.advance(2)
    assert release_due(world.deps) == 1
    world.http.sites[PHOTO_URL] = png_bytes()
    world.step(Stage.FETCH)
    assert world.queued(Stage.RENDER) == 1
    assert len(world.http.downloads) == 2


def test_retries_run_out_and_the_job_fails(world: World) -> None:
    admit(world)
    world.http.sites[PHOTO_URL] = FetchUnavailable("HTTP 503")
    for _ in range(3):
        world.step(Stage.FETCH)
        world.clock.advance(100)
        release_due(world.deps)
    job = world.job("j1")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "fetch_unavailable"
    assert len(world.http.downloads) == 3


def test_a_cancel_is_noticed_between_inputs(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    admit(world, inputs=two_inputs())
    world.http.sites = {PHOTO_URL: png_bytes(), OTHER_URL: png_bytes()}
    real_check = check_media

    def check_then_cancel(path: Path, **limits: int) -> MediaInfo:
        info = real_check(path, **limits)
        cancel_job(world.deps, "j1")  # the client cancels while the first input is checked
        return info

    monkeypatch.setattr(fetch, "check_media", check_then_cancel)
    world.step(Stage.FETCH)
    assert [d.url for d in world.http.downloads] == [PHOTO_URL]  # the second never starts
    assert world.job("j1").status is JobStatus.CANCELLED
    assert world.queued(Stage.RENDER) == 0
    assert not inputs_folder(world.deps, "j1").exists()


def test_a_cancel_during_a_download_leaves_the_job_cancelled(world: World) -> None:
    # Cancel removes the scratch folder under the running download: the stage breaks off
    # (logged as a crash) and the pipeline neither fails the job nor hands it on.
    admit(world, inputs=two_inputs())
    world.http.sites = {PHOTO_URL: png_bytes(), OTHER_URL: png_bytes()}
    world.http.on_download = lambda url: cancel_job(world.deps, "j1")
    world.step(Stage.FETCH)
    job = world.job("j1")
    assert job.status is JobStatus.CANCELLED and job.error is not None
    assert job.error.code == "cancelled"  # not overwritten by the stage's failure
    assert world.queued(Stage.RENDER) == 0 and parked(world) == []


def test_a_message_for_a_cancelled_job_downloads_nothing(world: World) -> None:
    admit(world)
    cancel_job(world.deps, "j1")
    assert world.step(Stage.FETCH) == 1
    assert world.http.downloads == []


def test_each_retry_waits_twice_as_long_as_the_last(world: World) -> None:
    # The back-off is 2 s, then 4 s (base * 2**attempt): a flaky origin gets room, and a
    # retry never lands at once on the server that just failed.
    from app.store.keys import parse_parked_key

    admit(world)
    world.http.sites[PHOTO_URL] = FetchUnavailable("HTTP 503")
    waits = []
    for _ in range(2):
        started = world.clock.now
        world.step(Stage.FETCH)
        (key,) = parked(world)
        due = parse_parked_key(key).not_before
        waits.append(due - started)
        world.clock.now = due
        assert release_due(world.deps) == 1
    assert waits == [2.0, 4.0]


def test_the_download_is_given_a_cancel_check_that_sees_the_cancel(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    admit(world)
    seen: list[bool] = []

    def download(url: str, dest: Path, **options: Any) -> DownloadResult:
        should_cancel = options["should_cancel"]
        seen.append(should_cancel())
        cancel_job(world.deps, "j1")
        monkeypatch.setattr("app.engine.cancel.time.monotonic", lambda: 10.0**9)  # 0.5 s on
        seen.append(should_cancel())
        raise StageCancelled("stopped between chunks")

    monkeypatch.setattr(world.http, "download", download)
    world.step(Stage.FETCH)
    assert seen == [False, True]
    assert world.job("j1").status is JobStatus.CANCELLED
    assert world.queued(Stage.RENDER) == 0
