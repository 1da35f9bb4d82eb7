"""A client written for Comfy's v2 job API runs a job through the whole local pipeline:
real worker processes over SQLite, the ComfyUI double (or a real ComfyUI at COMFYUI_URL),
outputs in the folder store, downloaded through the signed URL the v2 job gives."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.api.ingress import create_app
from app.core.config import Settings
from app.deploy.local.runner import Pipeline
from app.engine.deps import Deps, build_deps
from tests.integration.api.v2_spec import TERMINAL, SpecClient
from tests.integration.comfy_target import Target, color, slow_workflow

pytestmark = pytest.mark.anyio
WAIT_S = 60.0
PUBLIC = "http://127.0.0.1:9"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pipeline(tmp_path: Path, comfy_target: Target) -> Iterator[Deps]:
    comfy_target.make_slow()  # so a cancel finds the job running
    settings = Settings(
        data_dir=tmp_path / "data",
        comfyui_url=comfy_target.url,
        public_url=PUBLIC,
        progress_interval_s=0.2,
    )
    deps = build_deps(settings)
    runner = Pipeline(settings)
    runner.start()
    try:
        yield deps
    finally:
        runner.shutdown(grace_s=10)


@pytest.fixture
async def v2(pipeline: Deps) -> AsyncIterator[SpecClient]:
    api_key = pipeline.tenants.create("acme").api_key
    transport = httpx.ASGITransport(app=create_app(pipeline))
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
        yield SpecClient(client, api_key)


def graph(blurs: int) -> dict[str, object]:
    nodes: dict[str, object] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 0xFF0000},
        }
    }
    previous = "1"
    for n in range(blurs):
        nodes[str(10 + n)] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 1, "sigma": 1.0},
        }
        previous = str(10 + n)
    nodes["2"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [previous, 0], "filename_prefix": f"v2{time.time_ns()}"},
    }
    return nodes


async def poll(v2: SpecClient, job: dict[str, object], until: set[str]) -> dict[str, object]:
    """Poll `urls.self` as the spec's poll-first client does."""
    deadline = time.monotonic() + WAIT_S
    while job["status"] not in until:
        assert time.monotonic() < deadline, f"job still {job['status']} after {WAIT_S} s"
        await asyncio.sleep(0.1)
        job = await v2.get(job)
    return job


async def test_a_v2_client_submits_polls_and_downloads(v2: SpecClient) -> None:
    job, _ = await v2.create(graph(blurs=0))
    done = await poll(v2, job, TERMINAL)
    assert done["status"] == "succeeded", done["error"]
    assert done["started_at"] is not None and done["completed_at"] is not None
    assert isinstance(done["metrics"], dict) and done["metrics"]["execution_ms"] is not None
    outputs = done["outputs"]
    assert isinstance(outputs, list) and len(outputs) == 1
    assert outputs[0]["type"] == "image" and outputs[0]["content_type"] == "image/png"
    download = await v2.http.get(outputs[0]["url"])
    assert download.status_code == 200
    assert Image.open(io.BytesIO(download.content)).size == (32, 24)
    listed = await v2.list_jobs(status="succeeded")
    assert [j["id"] for j in listed["jobs"]] == [done["id"]]


async def test_a_v2_client_cancels_a_running_job(v2: SpecClient) -> None:
    # Large blurs of a new colour: a real ComfyUI neither finishes them before the cancel
    # nor serves them from its cache (a fixed 32x24 graph ended before it was seen running).
    job, _ = await v2.create(slow_workflow(color(), size=512))
    await poll(v2, job, {"running", *TERMINAL})
    cancelled = await v2.cancel(job)
    assert cancelled["status"] == "canceled"
    assert (await v2.get(job))["status"] == "canceled"
