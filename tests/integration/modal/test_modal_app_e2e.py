"""The real Modal app on the emulator, one job per feature, from the HTTP API to the end.

Every stage runs in its own emulated container (its own view of the scratch volume), the
render container talks to the ComfyUI double, and retries come back only through the
Modal `sweep` firing on the emulated schedule, as in production.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image
from standardwebhooks import Webhook

from app.core.errors import ComfyUnavailable, FetchUnavailable, StorageUnavailable
from app.store.keys import DELAYED_DICT
from tests.integration.modal.conftest import World

TERMINAL = {"completed", "failed", "cancelled"}


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(out, format="PNG")
    return out.getvalue()


def invert_request(world: World, **extra: Any) -> dict[str, Any]:
    world.site.files["/in.png"] = (png((200, 10, 30)), "image/png")
    return {
        "workflow": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": f"m{time.time_ns()}"},
            },
        },
        "inputs": [{"name": "face.png", "url": world.site.url("/in.png")}],
        **extra,
    }


def settle(world: World, job_id: str, *, minutes: int = 15) -> dict[str, Any]:
    """Run spawned work, then let the schedules fire minute by minute until the job ends."""
    world.run()
    for _ in range(minutes):
        view = world.view(job_id)
        if view["status"] in TERMINAL and not list(world.deps.backend.kv(DELAYED_DICT).keys()):
            break
        world.emu.advance(60)
    return world.view(job_id)


def assert_released(world: World) -> None:
    """No job holds a slot or sits in the reaper's working set, nothing stays parked."""
    assert list(world.deps.jobs.active_ids()) == []
    assert list(world.deps.backend.kv(DELAYED_DICT).keys()) == []


def test_job_with_an_input_and_a_signed_webhook_runs_on_modal(world: World) -> None:
    world.site.fail_first = 1  # the receiver fails once: the Modal sweep must retry it
    response = world.submit(invert_request(world, webhook_url=world.site.url("/hook")))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    view = settle(world, job_id)
    assert view["status"] == "completed", view
    assert len(view["outputs"]) == 1
    job = world.deps.jobs.get(job_id)
    stored = world.app.objects.objects[job.outputs[0].key].data
    assert Image.open(io.BytesIO(stored)).convert("RGB").getpixel((0, 0)) == (55, 245, 225)
    posts = [p for p in world.site.posts() if p.path == "/hook"]
    assert len(posts) == 2, "the failed first delivery was retried by the sweep"
    tenant = world.deps.tenants.get(job.tenant_id)
    assert tenant is not None
    secret = tenant.webhook_secrets[0]
    verified = Webhook(secret).verify(posts[1].body, posts[1].headers)
    assert {k: verified["data"][k] for k in ("job_id", "status")} == {
        "job_id": job_id,
        "status": "completed",
    }
    (output,) = verified["data"]["outputs"]
    assert output["size"] == len(stored)
    # Signed when the delivery was made: the same object, its own expiry.
    assert output["url"].split("?")[0] == view["outputs"][0]["url"].split("?")[0]
    assert_released(world)


def test_opted_in_events_arrive_signed_and_before_the_terminal_one(world: World) -> None:
    hook = world.site.url("/events")
    events = ["job.started", "job.progress"]
    response = world.submit(invert_request(world, webhook_url=hook, webhook_events=events))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    view = settle(world, job_id)
    assert view["status"] == "completed", view
    job = world.deps.jobs.get(job_id)
    tenant = world.deps.tenants.get(job.tenant_id)
    assert tenant is not None
    receiver = Webhook(tenant.webhook_secrets[0])
    posts = [p for p in world.site.posts() if p.path == "/events"]
    kinds = [receiver.verify(p.body, p.headers)["type"] for p in posts]
    assert kinds[-1] == "job.completed" and kinds.count("job.completed") == 1, kinds
    assert "job.started" in kinds, kinds
    assert set(kinds[:-1]) <= {"job.started", "job.progress"}, kinds
    assert_released(world)


def test_cancel_while_queued(world: World) -> None:
    job_id = world.submit(invert_request(world)).json()["id"]
    assert world.cancel(job_id).status_code == 200
    view = settle(world, job_id)
    assert view["status"] == "cancelled"
    assert world.faults.calls.get("download", 0) == 0, "a cancelled job never fetches"
    assert_released(world)


@pytest.mark.parametrize("phase", ["download", "render", "upload"])
def test_cancel_in_each_running_phase(world: World, phase: str) -> None:
    job_id = world.submit(invert_request(world)).json()["id"]
    cancelled: list[int] = []

    def cancel_now() -> None:
        if not cancelled:
            cancelled.append(world.cancel(job_id).status_code)

    setattr(world.faults, phase, cancel_now)
    view = settle(world, job_id)
    assert cancelled == [200]
    assert view["status"] == "cancelled", view
    assert view["outputs"] == []
    assert_released(world)


@pytest.mark.parametrize(
    ("phase", "error"),
    [
        ("download", FetchUnavailable("input host busy")),
        ("render", ComfyUnavailable()),
        ("upload", StorageUnavailable("bucket busy")),
    ],
)
def test_a_transient_error_parks_and_the_modal_sweep_brings_it_back(
    world: World, phase: str, error: Exception
) -> None:
    raised: list[str] = []

    def fail_once() -> None:
        if not raised:
            raised.append(phase)
            raise error

    setattr(world.faults, phase, fail_once)
    job_id = world.submit(invert_request(world)).json()["id"]
    world.run()
    assert raised == [phase]
    assert world.view(job_id)["status"] not in TERMINAL
    assert len(list(world.deps.backend.kv(DELAYED_DICT).keys())) == 1, "the retry is parked"
    view = settle(world, job_id)
    assert view["status"] == "completed", view
    assert (
        world.faults.calls[{"download": "download", "render": "run", "upload": "put_file"}[phase]]
        == 2
    )
    assert_released(world)


def test_an_admission_burst_takes_exactly_the_cap(world: World) -> None:
    body = invert_request(world)
    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(lambda _: world.submit(body).status_code, range(8)))
    assert codes == [202] * 5 + [429] * 3
    assert len(list(world.deps.jobs.active_ids())) == 5
