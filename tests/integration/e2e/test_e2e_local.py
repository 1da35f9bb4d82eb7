"""The whole local pipeline end to end: real worker processes over SQLite, the ComfyUI
double, an input served from 127.0.0.2, outputs in the folder store, a signed webhook.

The same tests run against a real ComfyUI when COMFYUI_URL is set (marked `comfyui`).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from standardwebhooks import Webhook

from app.adapters.storage.local import LocalStore
from app.core.config import Settings
from app.core.models import JobStatus
from app.core.schemas import JobRequest, timings_of
from app.deploy.local.runner import Pipeline
from app.engine.deps import Deps, build_deps
from app.stages.intake import admit
from tests.comfy_double import ComfyDouble
from tests.support.http_servers import Site, serve
from tests.support.s3_server import S3Server
from tests.support.waiting import WaitTimeout, wait_until

WAIT_S = 60.0


def png(color: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def invert_workflow(image_name: str, prefix: str = "e2e") -> dict[str, object]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def slow_workflow(seed: int) -> dict[str, object]:
    graph: dict[str, object] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": seed},
        },
    }
    previous = "1"
    for node in ("10", "11", "12", "13", "14", "15"):
        graph[node] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 31, "sigma": 1.0},
        }
        previous = node
    graph["20"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [previous, 0], "filename_prefix": "slow"},
    }
    return graph


@pytest.fixture(params=["double", pytest.param("real", marks=pytest.mark.comfyui)])
def comfy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, base folder) of the ComfyUI under test; the folder is "" when not visible.

    For a real ComfyUI, COMFYUI_BASE_DIR names its base folder (with input/ and output/)
    when the test can see it.
    """
    if request.param == "real":
        url = os.environ.get("COMFYUI_URL", "")
        if not url:
            pytest.skip("COMFYUI_URL is not set; see docs/comfyui.md")
        yield url.rstrip("/"), os.environ.get("COMFYUI_BASE_DIR", "")
        return
    double = ComfyDouble(tmp_path / "comfy")
    double.node_delay_s = {"ImageBlur": 0.5}
    double.start()
    try:
        yield double.url, str(tmp_path / "comfy")
    finally:
        double.stop()


@pytest.fixture
def site() -> Iterator[Site]:
    with serve("127.0.0.2") as site:
        yield site


@pytest.fixture
def pipeline(tmp_path: Path, comfy: tuple[str, str], site: Site) -> Iterator[Deps]:
    settings = Settings(
        data_dir=tmp_path / "data",
        comfyui_url=comfy[0],
        comfyui_base_dir=comfy[1],
        fetch_allow_http=True,
        fetch_allow_cidrs=["127.0.0.2/32"],
        fetch_allowed_ports=[site.port],
        webhook_retry_schedule_s=[1, 1],
        webhook_timeout_s=5,
        public_url="http://127.0.0.1:9",
        # Progress and cancel checks often enough to see a render's first nodes (default 2 s).
        progress_interval_s=0.2,
    )
    deps = build_deps(settings)
    runner = Pipeline(settings)
    runner.start()
    try:
        yield deps
    finally:
        runner.shutdown(grace_s=10)


def wait_for(deps: Deps, job_id: str, done: set[JobStatus]) -> None:
    try:
        wait_until(lambda: deps.jobs.get(job_id).status in done, timeout_s=WAIT_S, interval_s=0.1)
    except WaitTimeout:
        raise WaitTimeout(f"job {job_id} still {deps.jobs.get(job_id)} after {WAIT_S} s") from None


def wait_posts(site: Site, count: int) -> None:
    wait_until(
        lambda: len(site.posts()) >= count,
        timeout_s=WAIT_S,
        interval_s=0.1,
        what=f"{count} webhook posts",
    )


TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


def test_job_runs_end_to_end_with_a_signed_webhook(pipeline: Deps, site: Site) -> None:
    # Given a tenant, an input image on 127.0.0.2 and a webhook receiver that fails once
    deps = pipeline
    new = deps.tenants.create("acme")
    red = (200, 10, 30)
    site.files["/in.png"] = (png(red), "image/png")
    site.fail_first = 1
    request = JobRequest(
        workflow=invert_workflow("face.png", prefix=f"e2e{time.time_ns()}"),
        inputs=[{"name": "face.png", "url": site.url("/in.png")}],
        webhook_url=site.url("/hook"),
        metadata={"order": 42},
    )
    # When it is admitted and the workers run it
    job = admit(deps, new.tenant, "user-1", request).job
    wait_for(deps, job.id, TERMINAL)
    # Then it completed with one stored output: the inverted input image
    done = deps.jobs.get(job.id)
    assert done.status is JobStatus.COMPLETED, done.error
    assert len(done.outputs) == 1
    output = done.outputs[0]
    assert output.content_type == "image/png"
    assert output.key.startswith(f"outputs/{new.tenant.id}/user-1/{job.id}/")
    store = deps.objects
    assert isinstance(store, LocalStore)
    pixels = Image.open(store.path_for(output.key)).convert("RGB")
    r, g, b = pixels.getpixel((0, 0))  # type: ignore[misc]
    assert all(abs(a - (255 - e)) <= 1 for a, e in zip((r, g, b), red, strict=True))
    # And the status shows per-stage timings
    timings = timings_of(done)
    for name in ("queue_wait_s", "fetch_s", "render_s", "upload_s", "total_s"):
        value = getattr(timings, name)
        assert value is not None and value >= 0, name
    # And the webhook arrived signed, twice with one id (the first answer was a 500)
    wait_posts(site, 2)
    posts = site.posts()
    assert len(posts) == 2
    assert posts[0].headers["webhook-id"] == posts[1].headers["webhook-id"]
    verified = Webhook(new.webhook_secret).verify(posts[1].body, posts[1].headers)
    assert verified["type"] == "job.completed"
    data = verified["data"]
    assert (data["job_id"], data["status"]) == (job.id, "completed")
    # The outputs ride along, signed at each attempt (so the two links differ)
    assert [o["filename"] for o in data["outputs"]] == [o.filename for o in done.outputs]
    assert all(o["size"] > 0 and "sig=" in o["url"] for o in data["outputs"])
    # And the scratch folder is gone, and so are the job's folders on the ComfyUI side
    assert not (deps.settings.work_dir / job.id).exists()
    base = deps.settings.comfyui_base_dir
    if base:
        for kind in ("input", "output"):
            assert (Path(base) / kind).is_dir()
            assert not (Path(base) / kind / job.id).exists(), kind


def test_a_runtime_error_fails_the_job_with_node_details(pipeline: Deps) -> None:
    deps = pipeline
    tenant = deps.tenants.create("acme").tenant
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 1},
        },
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": 2},
        },
        "3": {
            "class_type": "ImageBlend",
            "inputs": {
                "image1": ["1", 0],
                "image2": ["2", 0],
                "blend_factor": 0.5,
                "blend_mode": "normal",
            },
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "err"}},
    }
    job = admit(deps, tenant, "u", JobRequest(workflow=graph)).job
    wait_for(deps, job.id, TERMINAL)
    failed = deps.jobs.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert (failed.error.code, failed.error.node_id, failed.error.node_type) == (
        "render_failed",
        "3",
        "ImageBlend",
    )
    assert "Traceback" not in failed.error.message


def test_cancel_during_render_interrupts_comfyui(pipeline: Deps) -> None:
    from app.engine.pipeline import cancel_job

    deps = pipeline
    tenant = deps.tenants.create("acme").tenant
    job = admit(deps, tenant, "u", JobRequest(workflow=slow_workflow(time.time_ns() % 1000))).job
    wait_until(
        lambda: deps.jobs.get(job.id).progress_detail.get("node_type") == "ImageBlur",
        timeout_s=WAIT_S,
        what="render started",
    )
    cancelled_at = time.monotonic()
    cancel_job(deps, job.id)
    assert deps.jobs.get(job.id).status is JobStatus.CANCELLED
    # The render worker notices and frees ComfyUI: a second job runs right after.
    follow = admit(deps, tenant, "u", JobRequest(workflow=invert_workflow_empty())).job
    wait_for(deps, follow.id, TERMINAL)
    assert deps.jobs.get(follow.id).status is JobStatus.COMPLETED
    assert time.monotonic() - cancelled_at < 10
    # And ComfyUI's own history says the prompt was interrupted, not run to the end.
    history = httpx.get(f"{deps.settings.comfyui_url}/history?max_items=20").json()
    ours = [entry for entry in history.values() if job.id in json.dumps(entry["prompt"])]
    assert len(ours) == 1
    events = [name for name, _ in ours[0]["status"]["messages"]]
    assert "execution_interrupted" in events and "execution_success" not in events
    assert ours[0]["outputs"] == {}


def invert_workflow_empty() -> dict[str, object]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": time.time_ns() % 99999},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "after"},
        },
    }


def test_outputs_go_to_s3_and_every_read_presigns_afresh(
    tmp_path: Path, site: Site, s3_server: S3Server
) -> None:
    """The production storage path: upload to an S3 API server, presigned GETs over HTTP."""
    from app.adapters.storage.s3 import S3Store
    from app.api.ingress import create_app
    from tests.integration.ingress_harness import free_socket, serve_in_thread
    from tests.support.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

    double = ComfyDouble(tmp_path / "comfy")
    double.start()
    settings = Settings(
        data_dir=tmp_path / "data",
        comfyui_url=double.url,
        storage="s3",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region=REGION,
        s3_bucket="e2e-outputs",
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SECRET_ACCESS_KEY,
    )
    s3_server.gate.clock_offset_s = 0.0
    S3Store.from_settings(settings).client.create_bucket(Bucket="e2e-outputs")
    deps = build_deps(settings)
    runner = Pipeline(settings)
    runner.start()
    try:
        new = deps.tenants.create("acme")
        headers = {"Authorization": f"Bearer {new.api_key}", "X-User-ID": "ann"}
        with (
            serve_in_thread(create_app(deps), free_socket()) as base,
            httpx.Client(base_url=base) as api,
        ):
            posted = api.post(
                "/v1/jobs", headers=headers, json={"workflow": invert_workflow_empty()}
            )
            assert posted.status_code == 202, posted.text
            job_id = posted.json()["id"]
            wait_for(deps, job_id, TERMINAL)
            first = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
            time.sleep(1.1)  # SigV4 signs with one-second resolution
            second = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
    finally:
        runner.shutdown(grace_s=10)
        double.stop()
    assert first["status"] == "completed"
    url_1, url_2 = first["outputs"][0]["url"], second["outputs"][0]["url"]
    assert url_1 != url_2
    assert url_1.startswith(f"{s3_server.endpoint_url}/e2e-outputs/outputs/")
    for url in (url_1, url_2):
        got = httpx.get(url)  # no API key: the signature is the permission
        assert got.status_code == 200
        assert got.content.startswith(b"\x89PNG")
        assert got.headers["content-type"] == "image/png"
        assert got.headers["content-disposition"].startswith("attachment")
    tampered = url_1.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert httpx.get(tampered).status_code == 403
