"""`POST /v1/uploads` and upload/base64 inputs through the ingress: scoping and every 4xx."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from app.api.ingress import create_app
from app.core.models import Stage
from app.engine import maintenance
from app.store.uploads import UploadStore
from tests.integration.ingress_harness import Harness, make_harness
from tests.support.settings import SettingsFactory

pytestmark = pytest.mark.anyio

UPLOAD_LIMIT = 40_000
INLINE_LIMIT = 3_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def harness(settings_factory: SettingsFactory) -> Harness:
    return make_harness(
        settings_factory(
            public_url="http://testserver",
            max_request_bytes=16_000,
            upload_max_bytes=UPLOAD_LIMIT,
            inline_input_max_bytes=INLINE_LIMIT,
            upload_ttl_s=3600,
        )
    )


@pytest.fixture
async def http(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(harness.deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


def load_image(name: str = "photo.png") -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "u"}},
    }


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert "Traceback" not in response.text and "/tmp" not in response.text
    return str(error["message"])


async def upload(http: httpx.AsyncClient, harness: Harness, data: bytes, **kw: Any) -> str:
    headers = harness.headers(harness.acme, kw.pop("user", "alice"))
    posted = await http.post("/v1/uploads", content=data, headers=headers)
    assert posted.status_code == 201, posted.text
    return str(posted.json()["upload_id"])


async def submit(
    http: httpx.AsyncClient, harness: Harness, inputs: list[dict[str, Any]], **kw: Any
) -> httpx.Response:
    tenant = harness.beta if kw.get("tenant") == "beta" else harness.acme
    return await http.post(
        "/v1/jobs",
        json={"workflow": load_image(), "inputs": inputs},
        headers=harness.headers(tenant, kw.get("user", "alice")),
    )


async def test_a_raw_upload_is_sniffed_stored_and_usable_as_an_input(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    data = png()
    posted = await http.post(
        "/v1/uploads",
        content=data,
        headers={**harness.headers(harness.acme, "alice"), "Content-Type": "text/plain"},
    )
    assert posted.status_code == 201, posted.text
    view = posted.json()
    assert view["content_type"] == "image/png"  # from the bytes, not the header
    assert view["size"] == len(data)
    record = UploadStore(harness.deps.backend).find(view["upload_id"])
    assert record is not None and harness.deps.objects.size_of(record.key) == len(data)

    submitted = await submit(http, harness, [{"name": "photo.png", "upload_id": view["upload_id"]}])

    assert submitted.status_code == 202, submitted.text
    job = harness.deps.jobs.get(submitted.json()["id"])
    assert job.stage is Stage.FETCH
    assert [(i.name, i.upload_id) for i in job.inputs] == [("photo.png", view["upload_id"])]


async def test_a_multipart_upload_takes_the_file_part(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    data = png((5, 5))
    posted = await http.post(
        "/v1/uploads",
        files={"file": ("p.png", data, "application/octet-stream")},
        data={"note": "ignored"},
        headers=harness.headers(harness.acme, "alice"),
    )
    assert posted.status_code == 201, posted.text
    record = UploadStore(harness.deps.backend).find(posted.json()["upload_id"])
    assert record is not None and record.size == len(data)


async def test_oversize_and_wrong_type_are_413_and_415(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    headers = harness.headers(harness.acme, "alice")
    big = png() + b"\0" * UPLOAD_LIMIT
    assert_error(
        await http.post("/v1/uploads", content=big, headers=headers), 413, "upload_too_large"
    )
    huge = b"\0" * (UPLOAD_LIMIT + 100_000)  # past the route's body limit: refused unread
    assert_error(
        await http.post("/v1/uploads", content=huge, headers=headers), 413, "request_too_large"
    )
    text = b"#!/bin/sh\necho not an image\n"
    assert_error(
        await http.post("/v1/uploads", content=text, headers=headers), 415, "unsupported_media_type"
    )
    assert list(UploadStore(harness.deps.backend).kv.keys()) == []


async def test_another_tenants_or_users_upload_reads_as_missing(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    upload_id = await upload(http, harness, png())
    missing = "upl_" + "0" * 32

    messages = {
        who: assert_error(
            await submit(http, harness, [{"name": "photo.png", "upload_id": uid}], **who_kw),
            404,
            "upload_not_found",
        )
        for who, uid, who_kw in (
            ("beta", upload_id, {"tenant": "beta"}),
            ("bob", upload_id, {"user": "bob"}),
            ("missing", missing, {}),
        )
    }
    assert {m.replace(missing, upload_id) for m in messages.values()} == {messages["beta"]}
    read = await http.get(
        f"/v1/uploads/{upload_id}", headers=harness.headers(harness.beta, "alice")
    )
    assert_error(read, 404, "upload_not_found")
    mine = await http.get(
        f"/v1/uploads/{upload_id}", headers=harness.headers(harness.acme, "alice")
    )
    assert mine.status_code == 200 and mine.json()["upload_id"] == upload_id


async def test_an_expired_upload_says_so_and_cleanup_removes_it(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    upload_id = await upload(http, harness, png())
    record = UploadStore(harness.deps.backend).find(upload_id)
    assert record is not None
    harness.clock.advance(3601)

    message = assert_error(
        await submit(http, harness, [{"name": "photo.png", "upload_id": upload_id}]),
        410,
        "upload_expired",
    )
    assert "expired" in message

    report = maintenance.cleanup(harness.deps)
    assert report["uploads_deleted"] == 1
    assert UploadStore(harness.deps.backend).find(upload_id) is None
    assert harness.deps.objects.size_of(record.key) is None
    assert_error(
        await submit(http, harness, [{"name": "photo.png", "upload_id": upload_id}]),
        404,
        "upload_not_found",
    )


async def test_cleanup_keeps_live_uploads(http: httpx.AsyncClient, harness: Harness) -> None:
    upload_id = await upload(http, harness, png())
    harness.clock.advance(3000)

    assert maintenance.cleanup(harness.deps)["uploads_deleted"] == 0
    assert UploadStore(harness.deps.backend).find(upload_id) is not None


async def test_inline_base64_is_stored_as_an_upload_of_the_job(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    data = png()
    encoded = "data:image/png;base64," + base64.b64encode(data).decode()

    submitted = await submit(http, harness, [{"name": "photo.png", "data": encoded}])

    assert submitted.status_code == 202, submitted.text
    (spec,) = harness.deps.jobs.get(submitted.json()["id"]).inputs
    assert spec.name == "photo.png" and spec.url == "" and spec.upload_id is not None
    record = UploadStore(harness.deps.backend).find(spec.upload_id)
    assert record is not None and record.tenant_id == harness.acme.id
    assert record.user_id == "alice" and record.size == len(data)


async def test_inline_base64_errors_are_clear(http: httpx.AsyncClient, harness: Harness) -> None:
    assert_error(
        await submit(http, harness, [{"name": "photo.png", "data": "not base64!"}]),
        400,
        "invalid_base64",
    )
    too_big = base64.b64encode(png() + b"\0" * INLINE_LIMIT).decode()
    assert_error(
        await submit(http, harness, [{"name": "photo.png", "data": too_big}]),
        413,
        "upload_too_large",
    )
    script = base64.b64encode(b"<?php echo 1; ?>").decode()
    assert_error(
        await submit(http, harness, [{"name": "photo.png", "data": script}]),
        415,
        "unsupported_media_type",
    )
    both = [{"name": "photo.png", "data": "AAAA", "url": "https://example.com/a.png"}]
    assert_error(await submit(http, harness, both), 422, "validation_error")
    assert list(UploadStore(harness.deps.backend).kv.keys()) == []


async def test_a_loadimage_must_still_name_one_of_the_inputs(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    upload_id = await upload(http, harness, png())

    refused = await submit(http, harness, [{"name": "other.png", "upload_id": upload_id}])

    message = assert_error(refused, 400, "invalid_workflow")
    assert "photo.png" in message and "inputs" in message


async def test_a_presigned_put_needs_s3_storage(http: httpx.AsyncClient, harness: Harness) -> None:
    asked = await http.post(
        "/v1/uploads",
        json={"name": "p.png", "content_type": "image/png", "size": 100},
        headers=harness.headers(harness.acme, "alice"),
    )
    assert_error(asked, 400, "direct_upload_unavailable")
