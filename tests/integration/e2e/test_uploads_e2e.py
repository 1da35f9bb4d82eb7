"""Inputs without a public URL, end to end: the local pipeline (real worker processes) runs
LoadImage jobs whose input was uploaded, sent inline as base64, or PUT to S3 (moto on
127.0.0.1) with a presigned link. On the ComfyUI double and, with COMFYUI_URL (marked
`comfyui`), on a real ComfyUI.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.api.ingress import create_app
from app.core.config import Settings
from app.core.models import JobStatus
from app.deploy.local.runner import Pipeline
from app.engine.deps import build_deps
from tests.comfy_double import ComfyDouble
from tests.integration.ingress_harness import free_socket, serve_in_thread
from tests.support.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server
from tests.support.waiting import wait_until

WAIT_S = 90.0
TERMINAL = {JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value}


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(out, format=fmt)
    return out.getvalue()


def invert(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": f"up{time.time_ns()}"},
        },
    }


@pytest.fixture(params=["double", pytest.param("real", marks=pytest.mark.comfyui)])
def comfy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "real":
        url = os.environ.get("COMFYUI_URL", "")
        if not url:
            pytest.skip("COMFYUI_URL is not set; see docs/comfyui.md")
        yield url.rstrip("/"), os.environ.get("COMFYUI_BASE_DIR", "")
        return
    double = ComfyDouble(tmp_path / "comfy")
    double.start()
    try:
        yield double.url, str(tmp_path / "comfy")
    finally:
        double.stop()


@contextmanager
def running(settings: Settings) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """The pipeline and a real ingress over `settings`; an API client and its headers."""
    deps = build_deps(settings)
    runner = Pipeline(settings)
    runner.start()
    try:
        new = deps.tenants.create("acme")
        headers = {"Authorization": f"Bearer {new.api_key}", "X-User-ID": "ann"}
        with (
            serve_in_thread(create_app(deps), free_socket()) as base,
            httpx.Client(base_url=base, timeout=30) as api,
        ):
            yield api, headers
    finally:
        runner.shutdown(grace_s=10)


def run_job(api: httpx.Client, headers: dict[str, str], inputs: list[dict[str, Any]]) -> Any:
    posted = api.post(
        "/v1/jobs", headers=headers, json={"workflow": invert(inputs[0]["name"]), "inputs": inputs}
    )
    assert posted.status_code == 202, posted.text
    job_id = posted.json()["id"]

    def view() -> Any:
        return api.get(f"/v1/jobs/{job_id}", headers=headers).json()

    wait_until(lambda: view()["status"] in TERMINAL, timeout_s=WAIT_S, interval_s=0.2)
    return view()


def test_uploaded_and_inline_inputs_complete_loadimage_jobs(
    tmp_path: Path, comfy: tuple[str, str]
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        comfyui_url=comfy[0],
        comfyui_base_dir=comfy[1],
        public_url="http://127.0.0.1:9",
    )
    with running(settings) as (api, headers):
        uploaded = api.post(
            "/v1/uploads",
            content=image_bytes((200, 10, 30)),
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        assert uploaded.status_code == 201, uploaded.text
        by_upload = run_job(
            api, headers, [{"name": "photo.png", "upload_id": uploaded.json()["upload_id"]}]
        )
        inline = base64.b64encode(image_bytes((0, 100, 250))).decode()
        by_inline = run_job(api, headers, [{"name": "face.png", "data": inline}])
        # Another user names the first job's input file on the ComfyUI side (and its
        # upload id): neither reaches ComfyUI.
        bob = {**headers, "X-User-ID": "bob"}
        own = base64.b64encode(image_bytes((1, 2, 3))).decode()
        sideways = api.post(
            "/v1/jobs",
            headers=bob,
            json={
                "workflow": invert(f"{by_upload['id']}/photo.png"),
                "inputs": [{"name": "mine.png", "data": own}],
            },
        )
        borrowed = api.post(
            "/v1/jobs",
            headers=bob,
            json={
                "workflow": invert("photo.png"),
                "inputs": [{"name": "photo.png", "upload_id": uploaded.json()["upload_id"]}],
            },
        )
    assert sideways.status_code == 400 and sideways.json()["error"]["code"] == "invalid_workflow"
    assert borrowed.status_code == 404 and borrowed.json()["error"]["code"] == "upload_not_found"
    assert by_upload["status"] == "completed", by_upload
    assert by_inline["status"] == "completed", by_inline


def test_a_presigned_put_input_completes_a_loadimage_job(
    tmp_path: Path, s3_server: S3Server
) -> None:
    double = ComfyDouble(tmp_path / "comfy")
    double.start()
    settings = Settings(
        data_dir=tmp_path / "data",
        comfyui_url=double.url,
        storage="s3",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_region=REGION,
        s3_bucket="e2e-uploads",
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SECRET_ACCESS_KEY,
    )
    s3_server.gate.clock_offset_s = 0.0
    from app.adapters.storage.s3 import S3Store

    S3Store.from_settings(settings).client.create_bucket(Bucket="e2e-uploads")
    red = image_bytes((200, 10, 30))
    try:
        with running(settings) as (api, headers):

            def ask(content_type: str, size: int) -> Any:
                asked = api.post(
                    "/v1/uploads",
                    headers=headers,
                    json={"name": "p.png", "content_type": content_type, "size": size},
                )
                assert asked.status_code == 201, asked.text
                return asked.json()

            granted = ask("image/png", len(red))
            assert granted["put_url"].startswith(f"{s3_server.endpoint_url}/e2e-uploads/uploads/")
            # Longer than signed: S3 refuses it (the length is part of the signature).
            longer = red + b"\0" * 10
            refused = httpx.put(
                granted["put_url"],
                content=longer,
                headers={**granted["headers"], "Content-Length": str(len(longer))},
            )
            assert refused.status_code == 403
            put = httpx.put(granted["put_url"], content=red, headers=granted["headers"])
            assert put.status_code == 200, put.text
            done = run_job(api, headers, [{"name": "photo.png", "upload_id": granted["upload_id"]}])

            # Declared JPEG, PUT a PNG under the signed type: fetch sniffs and refuses it.
            liar = ask("image/jpeg", len(red))
            put = httpx.put(liar["put_url"], content=red, headers=liar["headers"])
            assert put.status_code == 200, put.text
            lied = run_job(api, headers, [{"name": "photo.png", "upload_id": liar["upload_id"]}])

            never = ask("image/png", 100)
            missing = run_job(
                api, headers, [{"name": "photo.png", "upload_id": never["upload_id"]}]
            )

            big = api.post(
                "/v1/uploads",
                headers=headers,
                json={"content_type": "image/png", "size": settings.upload_max_bytes + 1},
            )
            text = api.post(
                "/v1/uploads", headers=headers, json={"content_type": "text/html", "size": 10}
            )
    finally:
        double.stop()
    assert done["status"] == "completed", done
    assert httpx.get(done["outputs"][0]["url"]).status_code == 200
    assert lied["status"] == "failed" and lied["error"]["code"] == "fetch_failed", lied
    assert "image/png, not the declared image/jpeg" in lied["error"]["message"]
    assert missing["status"] == "failed" and "nothing was uploaded" in missing["error"]["message"]
    assert big.status_code == 413 and big.json()["error"]["code"] == "upload_too_large"
    assert text.status_code == 415 and text.json()["error"]["code"] == "unsupported_media_type"
