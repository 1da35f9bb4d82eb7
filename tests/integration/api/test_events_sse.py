"""`GET /v1/jobs/{id}/events` end to end: real workers over SQLite, the ComfyUI double (or
a real ComfyUI with COMFYUI_URL, marked `comfyui`), a real uvicorn ingress, an SSE client.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.api.ingress import create_app
from app.clients.http_client import ApiClient
from app.clients.sse import ServerEvent, parse_events
from app.core.config import Settings
from app.core.models import JobStatus
from app.deploy.local.runner import Pipeline
from app.engine.deps import Deps, build_deps
from tests.comfy_double import ComfyDouble
from tests.integration.ingress_harness import free_socket, serve_in_thread
from tests.support.waiting import wait_until

WAIT_S = 60.0


def previewing_workflow() -> dict[str, object]:
    """Two images sent as binary frames (SaveImageWebsocket) and one saved."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 255},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "ev"}},
    }


class Service:
    def __init__(self, deps: Deps, base_url: str, api_key: str) -> None:
        self.deps, self.base_url, self.api_key = deps, base_url, api_key
        self.headers = {"Authorization": f"Bearer {api_key}", "X-User-ID": "alice"}

    def submit(self, workflow: dict[str, object]) -> str:
        with httpx.Client(base_url=self.base_url, trust_env=False, timeout=30) as http:
            response = http.post("/v1/jobs", json={"workflow": workflow}, headers=self.headers)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def events(self, job_id: str, after: int = 0, limit: int | None = None) -> list[ServerEvent]:
        """The stream's events after `after`; with `limit`, the connection drops after that many."""
        got: list[ServerEvent] = []
        headers = {**self.headers, "Last-Event-ID": str(after)}
        with (
            httpx.Client(base_url=self.base_url, trust_env=False, timeout=WAIT_S) as http,
            http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for event in parse_events(response.iter_lines()):
                got.append(event)
                if limit is not None and len(got) >= limit:
                    break  # the client goes away mid-stream
        return got


def _port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


@pytest.fixture(params=["double", pytest.param("real", marks=pytest.mark.comfyui)])
def comfy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, base folder) of the ComfyUI under test."""
    if request.param == "real":
        url = os.environ.get("COMFYUI_URL", "")
        if not url:
            pytest.skip("COMFYUI_URL is not set; see docs/comfyui.md")
        yield url.rstrip("/"), os.environ.get("COMFYUI_BASE_DIR", "")
        return
    double = ComfyDouble(tmp_path / "comfy")
    double.node_delay_s = {"ImageInvert": 0.6}
    double.start()
    try:
        yield double.url, str(tmp_path / "comfy")
    finally:
        double.stop()


@contextmanager
def _service(tmp_path: Path, comfy_url: str, base_dir: str = "") -> Iterator[Service]:
    sock = free_socket()
    port = sock.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path / "data",
        comfyui_url=comfy_url,
        comfyui_base_dir=base_dir,
        public_url=f"http://127.0.0.1:{port}",
        progress_interval_s=0.2,
        preview_interval_s=0.2,
        events_poll_interval_s=0.1,
        events_max_streams_per_tenant=2,
    )
    deps = build_deps(settings)
    api_key = deps.tenants.create("acme").api_key
    runner = Pipeline(settings)
    runner.start()
    try:
        with serve_in_thread(create_app(deps), sock) as base_url:
            yield Service(deps, base_url, api_key)
    finally:
        runner.shutdown(grace_s=10)


@pytest.fixture
def service(tmp_path: Path, comfy: tuple[str, str]) -> Iterator[Service]:
    with _service(tmp_path, *comfy) as running:
        yield running


def test_a_client_sees_every_event_in_order_and_resumes_without_losing_one(
    service: Service,
) -> None:
    job_id = service.submit(previewing_workflow())
    first = service.events(job_id, limit=2)  # dropped after two events
    rest = service.events(job_id, after=first[-1].id)  # resumed with Last-Event-ID
    events = first + rest
    ids = [e.id for e in events]
    assert ids == list(range(1, len(ids) + 1)), ids  # every id once, in order
    kinds = [e.type for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "completed", kinds
    assert [e.data["stage"] for e in events if e.type == "started"] == ["render", "upload"]
    progress = [e.data for e in events if e.type == "progress"]
    assert progress and all({"node_id", "value", "max"} <= p.keys() for p in progress)
    outputs = [e.data for e in events if e.type == "output"]
    assert len(outputs) == 2 and all("ev_" in o["filename"] for o in outputs), outputs
    assert httpx.get(outputs[0]["url"], trust_env=False).status_code == 200  # signed URL
    previews = [e.data for e in events if e.type == "preview"]
    assert previews and previews[0]["url"].startswith("data:image/jpeg;base64,")
    assert len(previews[0]["url"]) < 40_000  # small
    # Read again from the start after the end: the same ids, the same end.
    again = service.events(job_id)
    assert [e.id for e in again] == ids and again[-1].type == "completed"


def test_a_third_open_stream_of_the_tenant_is_429(service: Service) -> None:
    job_id = service.submit(previewing_workflow())
    with httpx.Client(base_url=service.base_url, trust_env=False, timeout=WAIT_S) as http:
        path = f"/v1/jobs/{job_id}/events"
        with (
            http.stream("GET", path, headers=service.headers) as one,
            http.stream("GET", path, headers=service.headers) as two,
        ):
            assert (one.status_code, two.status_code) == (200, 200)
            third = http.get(path, headers=service.headers)
            assert third.status_code == 429 and third.headers["retry-after"]
            assert third.json()["error"]["code"] == "too_many_streams"
        # Both ended: their places are free again.
        wait_until(
            lambda: http.get(path, headers=service.headers).status_code == 200,
            timeout_s=WAIT_S,
            what="a free stream place",
        )
        other = {**service.headers, "X-User-ID": "mallory"}
        assert http.get(path, headers=other).status_code == 404  # not theirs


def test_a_job_submitted_while_comfyui_is_down_reads_renderer_unavailable_then_completes(
    tmp_path: Path,
) -> None:
    port = _port()
    double = ComfyDouble(tmp_path / "comfy")
    try:
        with _service(tmp_path, f"http://127.0.0.1:{port}") as service:
            workflow = previewing_workflow()
            del workflow["3"]
            job_id = service.submit(workflow)
            with ApiClient(service.base_url, service.api_key, "alice") as client:
                wait_until(
                    lambda: client.get(job_id).detail == "renderer_unavailable",
                    timeout_s=WAIT_S,
                    what="renderer_unavailable",
                )
                assert client.get(job_id).status is JobStatus.QUEUED
                double.start(port)
                done = client.wait(job_id, timeout_s=WAIT_S)  # over the event stream
            assert done.status is JobStatus.COMPLETED, done
            kinds = [e.type for e in service.events(job_id)]
            details = [e.data.get("detail") for e in service.events(job_id) if e.type == "status"]
            assert "renderer_unavailable" in details and "rendering" in details, details
            assert kinds[-1] == "completed"
    finally:
        double.stop()
