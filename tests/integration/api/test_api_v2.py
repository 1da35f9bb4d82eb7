"""Comfy's v2 job API face (`/api/v2/jobs`), driven by a client written from its spec only.

Over httpx.ASGITransport and the ingress harness (SQLite, folder store, two tenants): the
jobs it makes are ours (the same admission, caps and tenancy as `/v1/jobs`); outputs are
stored by the harness as the upload stage would. The pipeline end to end, with the
ComfyUI double, is tests/integration/e2e/test_e2e_api_v2.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from app.api.ingress import create_app
from app.core.config import Settings
from app.core.models import JobStatus, Stage
from tests.integration.api.v2_spec import ApiFailure, SpecClient
from tests.integration.ingress_harness import WORKFLOW, Harness, make_harness
from tests.support.settings import SettingsFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def harness(settings_factory: SettingsFactory) -> Harness:
    return make_harness(
        settings_factory(public_url="http://testserver", max_request_bytes=64_000), acme_cap=3
    )


@pytest.fixture
async def http(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(harness.deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def v2(http: httpx.AsyncClient, harness: Harness) -> SpecClient:
    """The spec's client with acme's key and nothing else (no X-User-ID)."""
    return SpecClient(http, harness.acme.api_key)


def as_user(client: SpecClient, user: str, api_key: str | None = None) -> SpecClient:
    return SpecClient(client.http, api_key or client.api_key, {"X-User-ID": user})


async def failure(call: Any) -> ApiFailure:
    with pytest.raises(ApiFailure) as caught:
        await call
    return caught.value


# ---- create, get --------------------------------------------------------------------------


async def test_create_answers_201_with_a_spec_job_that_get_returns(
    v2: SpecClient, harness: Harness
) -> None:
    job, response = await v2.create(WORKFLOW)
    assert response.headers["Location"] == f"/api/v2/jobs/{job['id']}"
    assert "Idempotency-Replayed" not in response.headers
    assert job["status"] == "queued"
    assert job["outputs"] == [] and job["error"] is None and job["progress"] is None
    assert job["started_at"] is None and job["completed_at"] is None
    assert job["urls"] == {
        "self": f"/api/v2/jobs/{job['id']}",
        "events": f"/api/v2/jobs/{job['id']}/events",
        "cancel": f"/api/v2/jobs/{job['id']}/cancel",
    }
    # It is our job, admitted as POST /v1/jobs admits: stored, queued for render.
    stored = harness.deps.jobs.get(job["id"])
    assert (stored.tenant_id, stored.user_id) == (harness.acme.id, "default")
    assert stored.stage is Stage.RENDER
    assert await v2.get(job) == job


async def test_a_completed_job_reads_succeeded_with_spec_outputs(
    v2: SpecClient, http: httpx.AsyncClient, harness: Harness
) -> None:
    job, _ = await v2.create(WORKFLOW, metadata={"order": 7})
    harness.complete(job["id"], {"a.png": b"\x89PNG-a", "b.png": b"\x89PNG-bb"})
    done = await v2.get(job)
    assert done["status"] == "succeeded"
    assert done["completed_at"] is not None
    assert [(o["name"], o["type"], o["size_bytes"]) for o in done["outputs"]] == [
        ("a.png", "image", 6),
        ("b.png", "image", 7),
    ]
    assert [o["id"] for o in done["outputs"]] == [f"{job['id']}.0", f"{job['id']}.1"]
    # The URL is a freshly signed link to our folder store: it downloads the bytes.
    download = await http.get(done["outputs"][1]["url"])
    assert download.status_code == 200 and download.content == b"\x89PNG-bb"
    assert harness.deps.jobs.get(job["id"]).metadata == {"order": 7}


async def test_progress_and_a_failure_map_to_the_spec_fields(
    v2: SpecClient, harness: Harness
) -> None:
    job, _ = await v2.create(WORKFLOW)
    stored = harness.deps.jobs.get(job["id"])
    detail = {
        "node_id": "3",
        "node_type": "KSampler",
        "value": 5,
        "max": 20,
        "nodes_done": 1,
        "nodes_total": 4,
    }
    harness.deps.jobs.save(
        stored.model_copy(
            update={"status": JobStatus.RUNNING, "progress": 0.4, "progress_detail": detail}
        )
    )
    running = await v2.get(job)
    assert running["status"] == "running"
    assert running["progress"] == {
        "value": 0.4,
        "nodes_done": 1,
        "nodes_total": 4,
        "current_node": "3",
        "current_node_class": "KSampler",
        "step": 5,
        "steps": 20,
        "message": "KSampler 5/20",
    }
    from app.core.models import JobError

    error = JobError(code="render_failed", message="boom", node_id="3", node_type="KSampler")
    assert harness.deps.jobs.finish(job["id"], JobStatus.FAILED, error=error)
    failed = await v2.get(job)
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "code": "render_failed",
        "message": "boom",
        "node_id": "3",
        "class_type": "KSampler",
        "traceback": None,
    }


# ---- idempotency ----------------------------------------------------------------------------


async def test_idempotency_key_replays_and_refuses_another_body(
    v2: SpecClient, harness: Harness
) -> None:
    first, _ = await v2.create(WORKFLOW, idempotency_key="k-1")
    again, response = await v2.create(WORKFLOW, idempotency_key="k-1")
    assert again["id"] == first["id"]
    assert response.headers["Idempotency-Replayed"] == "true"
    assert len(list(harness.deps.jobs.active_ids())) == 1
    other = {**WORKFLOW, "9": WORKFLOW["2"]}
    refused = await failure(v2.create(other, idempotency_key="k-1"))
    assert (refused.status, refused.code) == (422, "idempotency_key_reuse")


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_a_malformed_idempotency_key_is_400(v2: SpecClient, key: str) -> None:
    response = await v2.http.post(
        "/api/v2/jobs",
        json={"workflow": WORKFLOW},
        headers={**v2._headers(), "Idempotency-Key": key},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


# ---- list -----------------------------------------------------------------------------------


async def test_list_pages_newest_first_and_filters_by_spec_status(
    v2: SpecClient, harness: Harness
) -> None:
    made = [(await as_user(v2, "alice").create(WORKFLOW))[0]["id"] for _ in range(3)]
    alice = as_user(v2, "alice")
    first = await alice.list_jobs(limit=2)
    assert [j["id"] for j in first["jobs"]] == made[::-1][:2]
    assert first["next_cursor"] is not None
    second = await alice.list_jobs(limit=2, cursor=first["next_cursor"])
    assert [j["id"] for j in second["jobs"]] == made[:1]
    assert second["next_cursor"] is None
    harness.complete(made[1], {"x.png": b"x"})
    succeeded = await alice.list_jobs(status="succeeded")
    assert [j["id"] for j in succeeded["jobs"]] == [made[1]]
    assert [j["id"] for j in (await alice.list_jobs(status="queued"))["jobs"]] == [made[2], made[0]]
    # Statuses of the spec this server never gives a job match nothing (not an error).
    assert (await alice.list_jobs(status="expired"))["jobs"] == []
    assert (await alice.list_jobs(status="canceling"))["jobs"] == []
    # Other users of the tenant, and other tenants, see none of them.
    assert (await v2.list_jobs())["jobs"] == []
    assert (await as_user(v2, "alice", harness.beta.api_key).list_jobs())["jobs"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"cursor": "abc"},
        {"status": "done"},
        # Digits to str.isdigit() that int() refuses (found by the fuzz test: a 500).
        {"limit": "\u00b9"},
        {"cursor": "\u00b9"},
        {"cursor": "\u0663"},
    ],
)
async def test_a_bad_list_parameter_is_400(v2: SpecClient, params: dict[str, str]) -> None:
    refused = await failure(v2.list_jobs(**params))
    assert (refused.status, refused.code) == (400, "invalid_request")


# ---- cancel ---------------------------------------------------------------------------------


async def test_cancel_is_immediate_and_idempotent(v2: SpecClient, harness: Harness) -> None:
    job, _ = await v2.create(WORKFLOW)
    cancelled = await v2.cancel(job)
    assert cancelled["status"] == "canceled"
    assert cancelled["completed_at"] is not None
    assert harness.deps.jobs.get(job["id"]).status is JobStatus.CANCELLED
    assert (await v2.cancel(job))["status"] == "canceled"
    done, _ = await v2.create(WORKFLOW)
    harness.complete(done["id"], {"x.png": b"x"})
    assert (await v2.cancel(done))["status"] == "succeeded"  # a no-op on an ended job


# ---- tenancy --------------------------------------------------------------------------------


async def test_another_tenants_or_users_job_is_a_404_like_a_missing_one(
    v2: SpecClient, harness: Harness
) -> None:
    job, _ = await as_user(v2, "alice").create(WORKFLOW)
    strangers = [
        as_user(v2, "alice", harness.beta.api_key),  # same user id, other tenant
        as_user(v2, "bob"),  # same tenant, other user
        v2,  # the tenant's default user
    ]
    missing = await failure(v2.get_id("job_" + "0" * 32))
    assert (missing.status, missing.code) == (404, "not_found")
    for client in strangers:
        for call in (client.get(job), client.cancel(job), client.events(job)):
            refused = await failure(call)
            assert (refused.status, refused.code, refused.message) == (
                404,
                missing.code,
                missing.message,
            )
    assert harness.deps.jobs.get(job["id"]).status is JobStatus.QUEUED  # not cancelled
    for bad_id in ("..%2F..%2Fv1%2Fjobs", "x" * 65):
        refused = await failure(v2.get_id(bad_id))
        assert refused.status == 404


async def test_without_a_valid_key_every_route_is_401(http: httpx.AsyncClient) -> None:
    anonymous = SpecClient(http, "csk_nope")
    base = "/api/v2/jobs/job_x"
    job = {"urls": {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}}
    for call in (
        anonymous.create(WORKFLOW),
        anonymous.list_jobs(),
        anonymous.get(job),
        anonymous.cancel(job),
        anonymous.events(job),
    ):
        refused = await failure(call)
        assert (refused.status, refused.code) == (401, "unauthorized")


async def test_a_bad_user_header_is_400(v2: SpecClient) -> None:
    refused = await failure(as_user(v2, "has space").create(WORKFLOW))
    assert (refused.status, refused.code) == (400, "invalid_request")


# ---- bad bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b'"workflow"', b'{"workflow": {"1": {}}, "surprise": 1}'],
)
async def test_a_malformed_body_is_400(v2: SpecClient, content: bytes) -> None:
    response = await v2.http.post(
        "/api/v2/jobs",
        content=content,
        headers={**v2._headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_workflow"),
        ({"workflow": {}}, "invalid_workflow"),
        ({"workflow": [1]}, "invalid_workflow"),
        ({"workflow": {"nodes": [], "links": []}}, "workflow_format_ui"),
        ({"workflow": WORKFLOW, "webhook_url": "https://example.com/h"}, "unsupported_field"),
        ({"workflow": WORKFLOW, "inputs": {"a": 1}}, "unsupported_field"),
        ({"workflow": WORKFLOW, "extra_data": {"api_key_comfy_org": "k"}}, "unsupported_field"),
        (
            {
                "workflow": {
                    "1": {
                        "class_type": "LoadImage",
                        "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "a"}}},
                    },
                    "2": WORKFLOW["2"],
                }
            },
            "missing_asset",
        ),
    ],
)
async def test_a_refused_workflow_is_422_with_the_spec_code(
    v2: SpecClient, harness: Harness, body: dict[str, Any], code: str
) -> None:
    response = await v2.http.post("/api/v2/jobs", json=body, headers=v2._headers())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert list(harness.deps.jobs.active_ids()) == []


async def test_a_workflow_our_checks_refuse_is_422_invalid_workflow_naming_the_node(
    v2: SpecClient,
) -> None:
    graph = {**WORKFLOW, "7": {"class_type": "NoSuchNode", "inputs": {}}}
    refused = await failure(v2.create(graph))
    assert (refused.status, refused.code) == (422, "invalid_workflow")
    assert "NoSuchNode" in refused.message
    assert refused.details["reason_code"]


# ---- limits ---------------------------------------------------------------------------------


async def test_over_the_users_cap_is_429_with_retry_after(v2: SpecClient) -> None:
    for _ in range(3):
        await v2.create(WORKFLOW)
    refused = await failure(v2.create(WORKFLOW))
    assert (refused.status, refused.code) == (429, "user_concurrency_limit")
    assert int(refused.headers["Retry-After"]) >= 1


async def test_over_the_rate_limit_is_429(settings_factory: SettingsFactory) -> None:
    harness = make_harness(settings_factory(public_url="http://testserver"), beta_rate=1)
    transport = httpx.ASGITransport(app=create_app(harness.deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        beta = SpecClient(client, harness.beta.api_key)
        await beta.create(WORKFLOW)
        refused = await failure(beta.create(WORKFLOW))
    assert (refused.status, refused.code) == (429, "rate_limited")
    assert "Retry-After" in refused.headers


async def test_a_full_render_backlog_is_429_queue_full(tmp_path: Path) -> None:
    harness = make_harness(
        Settings(data_dir=tmp_path, max_render_backlog=1, backpressure_check_interval_s=0)
    )
    harness.deps.queue(Stage.RENDER).put_many(["a", "b"])
    transport = httpx.ASGITransport(app=create_app(harness.deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        refused = await failure(SpecClient(client, harness.acme.api_key).create(WORKFLOW))
    assert (refused.status, refused.code) == (429, "queue_full")
    assert refused.headers["Retry-After"] == "30"
    assert list(harness.deps.jobs.active_ids()) == []


# ---- events ---------------------------------------------------------------------------------


async def test_events_are_the_jobs_log_in_the_specs_frames_and_resume(
    v2: SpecClient, harness: Harness, http: httpx.AsyncClient
) -> None:
    job, _ = await v2.create(WORKFLOW)
    harness.complete(job["id"], {"x.png": b"x"})

    frames = await v2.events(job)  # each frame checked against the spec's event schemas

    assert frames[0] == ("status", {"status": "queued", "queue_position": 0})
    assert frames[-2][0] == "output" and frames[-2][1]["name"] == "x.png"
    assert frames[-1][0] == "status" and frames[-1][1]["status"] == "succeeded"
    raw = await http.get(job["urls"]["events"], headers=v2._headers())
    ids = [int(line[4:]) for line in raw.text.splitlines() if line.startswith("id: ")]
    assert ids == sorted(ids) and len(ids) == len(frames) and ids[0] == 1
    resumed = await http.get(
        job["urls"]["events"], headers={**v2._headers(), "Last-Event-ID": str(ids[-2])}
    )
    assert [line for line in resumed.text.splitlines() if line.startswith("id: ")] == [
        f"id: {ids[-1]}"
    ]
    bad = await http.get(job["urls"]["events"], headers={**v2._headers(), "Last-Event-ID": "nope"})
    assert bad.status_code == 400


async def test_a_cancelled_jobs_events_end_with_canceled(v2: SpecClient) -> None:
    job, _ = await v2.create(WORKFLOW)
    await v2.cancel(job)
    frames = await v2.events(job)
    assert frames[-1][0] == "status" and frames[-1][1]["status"] == "canceled"
    assert frames[-1][1]["error"]["code"] == "cancelled"


# ---- the schema -----------------------------------------------------------------------------


async def test_openapi_stays_valid_and_shows_the_v2_routes(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/openapi.json")).json()
    validate(schema)
    paths = schema["paths"]
    assert {"post", "get"} <= set(paths["/api/v2/jobs"])
    assert "get" in paths["/api/v2/jobs/{job_id}"]
    assert "post" in paths["/api/v2/jobs/{job_id}/cancel"]
    assert "get" in paths["/api/v2/jobs/{job_id}/events"]
    body = paths["/api/v2/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/V2JobCreate"}
    assert "workflow" in schema["components"]["schemas"]["V2JobCreate"]["properties"]
    assert "JobView" in schema["components"]["schemas"]  # ours kept their names
