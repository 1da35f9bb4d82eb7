"""Opt-in `job.started` / `job.progress` webhooks: signed, retried, throttled, never late.

A whole job walks the pipeline on the memory backend with doubles for HTTP and ComfyUI;
the notify queue is drained as its worker would. Order is checked where it can break:
an event still queued when the job ends, and an event being posted when it ends.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from app.adapters.comfy.messages import ComfyOutput
from app.adapters.webhooks.delivery import PostResponse
from app.core.models import Job, JobStatus, Stage, StageMessage
from app.engine import webhook_events
from app.engine.pipeline import after_terminal, release_due
from app.engine.webhook_events import on_job_event
from app.stages import render
from app.store.jobs import Limits
from tests.state_helpers import new_job
from tests.unit.stages.fakes import FakeHttp, World, make_world, png_bytes
from tests.unit.stages.helpers import HOOK_URL, fetched, parked
from tests.unit.stages.test_notify import verify

IMAGE = png_bytes(5, 5)


@pytest.fixture(autouse=True)
def _forget_throttle() -> None:
    webhook_events._last_progress.clear()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    runs = itertools.count()
    monkeypatch.setattr(
        render, "new_prompt_id", lambda: f"r0000000-0000-4000-8000-{next(runs):012d}"
    )
    world = make_world(
        tmp_path,
        comfyui_base_dir=str(tmp_path / "comfy"),
        webhook_retry_schedule_s=[5, 60],
        webhook_progress_interval_s=5,
        progress_interval_s=1,
    )
    world.comfy.outputs = [
        ComfyOutput(node_id="2", filename="r0000000-t_00001_.png", subfolder="j1", type="output")
    ]
    world.comfy.files = {"r0000000-t_00001_.png": IMAGE}
    return world


def opted_in(world: World, events: list[str], job_id: str = "j1") -> tuple[Job, str]:
    """A job of a fresh tenant with a webhook and `events`, not started; its secret."""
    created = world.deps.tenants.create(f"acme-{job_id}")
    job = world.deps.jobs.create(
        new_job(tenant=created.tenant.id, webhook_url=HOOK_URL, webhook_events=events),
        job_id,
        Limits(),
    ).job
    return job, created.webhook_secret


def payloads(world: World) -> list[dict[str, Any]]:
    return [json.loads(post.body) for post in world.http.posts]


def types(world: World) -> list[str]:
    return [p["type"] for p in payloads(world)]


def test_started_and_progress_reach_the_receiver_signed_then_the_terminal_event(
    world: World,
) -> None:
    created = world.deps.tenants.create("acme")
    fetched(
        world,
        tenant=created.tenant.id,
        webhook_url=HOOK_URL,
        webhook_events=["job.started", "job.progress"],
    )
    world.http.answers = [PostResponse(200)] * 10
    assert world.step(Stage.NOTIFY) == 1  # fetch's start
    world.comfy.during_run = lambda: world.clock.advance(2)  # past the progress interval
    world.step(Stage.RENDER)
    world.step(Stage.NOTIFY)
    world.step(Stage.UPLOAD)
    world.step(Stage.NOTIFY)
    assert world.job("j1").status is JobStatus.COMPLETED
    # Upload's start was still queued when upload ended the job: dropped, not sent late.
    assert types(world) == ["job.started", "job.started", "job.progress", "job.completed"]
    started = [p["data"]["stage"] for p in payloads(world) if p["type"] == "job.started"]
    assert started == ["fetch", "render"]
    progress = payloads(world)[2]["data"]
    assert progress["progress"] == 0.5 and (progress["value"], progress["max"]) == (1, 2)
    for post in world.http.posts:
        verify(post, created.webhook_secret)
    ids = {post.headers["webhook-id"] for post in world.http.posts}
    assert len(ids) == 4  # one webhook-id per event


def test_a_job_that_did_not_opt_in_costs_no_call(world: World) -> None:
    job, _ = opted_in(world, [])
    calls: list[str] = []
    world.deps.queue = lambda stage: calls.append(stage.value)  # type: ignore[method-assign,assignment,return-value]
    on_job_event(world.deps, job, "job.started", {"stage": "fetch"})
    on_job_event(world.deps, job, "job.progress", {})
    assert calls == []
    only_started, _ = opted_in(world, ["job.started"], "j2")
    on_job_event(world.deps, only_started, "job.progress", {})
    assert calls == []  # opted in to another event only


def test_progress_is_throttled_per_job(world: World) -> None:
    job, _ = opted_in(world, ["job.progress"])
    other, _ = opted_in(world, ["job.progress"], "j2")
    for _ in range(3):
        on_job_event(world.deps, job, "job.progress", {})
        world.clock.advance(2)
    on_job_event(world.deps, other, "job.progress", {})
    world.clock.advance(0.5)  # 6.5 s after the first of j1
    on_job_event(world.deps, job, "job.progress", {})
    raws = [world.deps.queue(Stage.NOTIFY).get() for _ in range(world.queued(Stage.NOTIFY))]
    sent = [StageMessage.model_validate_json(str(raw)).job_id for raw in raws]
    assert sent == ["j1", "j2", "j1"]


def test_an_event_still_queued_when_the_job_ends_is_dropped(world: World) -> None:
    job, _ = opted_in(world, ["job.started"])
    on_job_event(world.deps, job, "job.started", {"stage": "fetch"})
    world.clock.advance(1)
    world.deps.jobs.finish("j1", JobStatus.FAILED)
    after_terminal(world.deps, world.job("j1"))
    world.http.answers = [PostResponse(200)] * 3
    assert world.step(Stage.NOTIFY) == 2
    assert types(world) == ["job.failed"]


class PostHook(FakeHttp):
    """A receiver that runs `during` while the first post is in flight."""

    during: Callable[[], object] | None = None

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> PostResponse:
        during, self.during = self.during, None
        if during is not None:
            during()
        return super().post(url, body, headers, timeout_s=timeout_s)


def test_the_terminal_event_waits_for_an_event_being_posted(world: World) -> None:
    hook = PostHook(answers=[PostResponse(200)] * 3)
    vars(world.deps)["http"] = hook
    world.http = hook
    job, _ = opted_in(world, ["job.started"])
    on_job_event(world.deps, job, "job.started", {"stage": "fetch"})
    terminal_ran: list[int] = []

    def job_ends_meanwhile() -> None:
        world.deps.jobs.finish("j1", JobStatus.COMPLETED)
        after_terminal(world.deps, world.job("j1"))
        terminal_ran.append(world.step(Stage.NOTIFY))  # another notify worker, at once

    hook.during = job_ends_meanwhile
    world.step(Stage.NOTIFY)
    assert terminal_ran == [1]
    assert types(world) == ["job.started"]  # the terminal one waited
    assert len(parked(world)) == 1
    world.clock.advance(world.deps.settings.webhook_timeout_s + 10)
    assert release_due(world.deps) == 1
    world.step(Stage.NOTIFY)
    assert types(world) == ["job.started", "job.completed"]


def test_a_failed_event_is_retried_with_its_id_and_body_and_never_fails_the_job(
    world: World,
) -> None:
    job, secret = opted_in(world, ["job.started"])
    on_job_event(world.deps, job, "job.started", {"stage": "fetch"})
    world.http.answers = [PostResponse(503), PostResponse(500), PostResponse(200)]
    world.step(Stage.NOTIFY)
    assert len(parked(world)) == 1
    for _ in range(2):
        world.clock.advance(120)
        assert release_due(world.deps) == 1
        world.step(Stage.NOTIFY)
    first, _, third = world.http.posts
    assert first.headers["webhook-id"] == third.headers["webhook-id"]
    assert first.body == third.body
    verify(third, secret)
    assert parked(world) == []
    assert world.job("j1").status is JobStatus.QUEUED  # nothing happened to the job


def test_a_retry_due_after_the_job_ended_is_dropped(world: World) -> None:
    job, _ = opted_in(world, ["job.started"])
    on_job_event(world.deps, job, "job.started", {"stage": "fetch"})
    world.http.answers = [PostResponse(503)]
    world.step(Stage.NOTIFY)
    world.deps.jobs.finish("j1", JobStatus.CANCELLED)
    world.clock.advance(120)
    release_due(world.deps)
    world.step(Stage.NOTIFY)
    assert types(world) == ["job.started"]  # only the first attempt went out


def test_a_broken_queue_loses_the_event_not_the_job(world: World) -> None:
    job, _ = opted_in(world, ["job.started"])

    def broken(stage: Stage) -> object:
        raise RuntimeError("queue gone")

    world.deps.queue = broken  # type: ignore[method-assign,assignment]
    on_job_event(world.deps, job, "job.started", {"stage": "fetch"})  # does not raise


def test_the_terminal_event_carries_its_outputs_signed_at_each_attempt(world: World) -> None:
    created = world.deps.tenants.create("acme")
    fetched(world, tenant=created.tenant.id, webhook_url=HOOK_URL)
    world.step(Stage.RENDER)
    world.step(Stage.UPLOAD)
    assert world.job("j1").status is JobStatus.COMPLETED
    world.http.answers = [PostResponse(503), PostResponse(200)]
    world.step(Stage.NOTIFY)
    first_at = world.clock.now
    world.clock.advance(120)
    release_due(world.deps)
    world.step(Stage.NOTIFY)
    first, second = payloads(world)
    expiry = world.deps.settings.presign_expiry_s
    for payload, at in ((first, first_at), (second, world.clock.now)):
        (output,) = payload["data"]["outputs"]
        assert (output["filename"], output["size"]) == ("r0000000-t_00001_.png", len(IMAGE))
        assert output["content_type"] == "image/png"
        assert f"expires={int(at) + expiry}" in output["url"]
    assert first["data"]["outputs"][0]["url"] != second["data"]["outputs"][0]["url"]
    assert world.http.posts[0].headers["webhook-id"] == world.http.posts[1].headers["webhook-id"]
    verify(world.http.posts[1], created.webhook_secret)


def test_a_job_ending_between_the_events_read_and_its_post_still_ends_last(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, _ = opted_in(world, ["job.started"])
    on_job_event(world.deps, job, "job.started", {"stage": "fetch"})
    world.http.answers = [PostResponse(200)] * 3
    store = world.deps.jobs
    read = store.find
    terminal_ran: list[int] = []

    def find_then_end(job_id: str) -> Job | None:
        found = read(job_id)
        if not terminal_ran:  # the event's read: the job ends right after it
            monkeypatch.setattr(store, "find", read)
            store.finish(job_id, JobStatus.COMPLETED)
            after_terminal(world.deps, world.job(job_id))
            terminal_ran.append(world.step(Stage.NOTIFY))
        return found

    monkeypatch.setattr(store, "find", find_then_end)
    world.step(Stage.NOTIFY)
    world.clock.advance(world.deps.settings.webhook_timeout_s + 10)
    release_due(world.deps)
    world.step(Stage.NOTIFY)
    assert types(world) == ["job.started", "job.completed"]
