"""The HTTP ingress through httpx.ASGITransport: every route and every error, two tenants."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest

from app.api.ingress import create_app
from app.core.models import JobStatus, Stage
from tests.integration.ingress_harness import WORKFLOW, Harness, make_harness
from tests.support.settings import SettingsFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def harness(settings_factory: SettingsFactory) -> Harness:
    return make_harness(settings_factory(public_url="http://testserver", max_request_bytes=64_000))


@pytest.fixture
async def http(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(harness.deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def body(**overrides: Any) -> dict[str, Any]:
    return {"workflow": WORKFLOW, **overrides}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    return dict(error)


async def submit(
    http: httpx.AsyncClient,
    harness: Harness,
    user: str = "alice",
    tenant: str = "acme",
    **overrides: Any,
) -> httpx.Response:
    keys = harness.acme if tenant == "acme" else harness.beta
    return await http.post("/v1/jobs", json=body(**overrides), headers=harness.headers(keys, user))


# ---- health, routing, error shape ---------------------------------------------------------


async def test_health_needs_no_auth(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_unknown_route_and_wrong_method_use_the_error_shape(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/nope"), 404, "not_found")
    response = await http.put("/v1/jobs", json={})
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


async def test_openapi_and_docs_are_served(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/openapi.json")).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/health"} <= set(schema["paths"])
    request_body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]
    refs = [s["$ref"] for s in request_body["content"]["application/json"]["schema"]["oneOf"]]
    assert refs == ["#/components/schemas/JobRequest", "#/components/schemas/TemplateJobRequest"]
    assert "workflow" in schema["components"]["schemas"]["JobRequest"]["properties"]
    assert (await http.get("/docs")).status_code == 200


# ---- authentication and the user header ----------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nope", "Basic abc", "Bearer ", "Bearer csk_aaaaaaaa_" + "x" * 32],
)
async def test_bad_or_missing_key_is_401(
    http: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"X-User-ID": "alice"}
    if authorization is not None:
        headers["Authorization"] = authorization
    for response in (
        await http.post("/v1/jobs", json=body(), headers=headers),
        await http.get("/v1/jobs", headers=headers),
        await http.get("/v1/jobs/job_x", headers=headers),
        await http.delete("/v1/jobs/job_x", headers=headers),
    ):
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_401_comes_before_any_body_parsing(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/jobs", content=b"{not json", headers={"X-User-ID": "a"})
    assert_error(response, 401, "unauthorized")


async def test_revoked_key_is_refused_at_once(http: httpx.AsyncClient, harness: Harness) -> None:
    headers = harness.headers(harness.acme, "alice")
    assert (await http.get("/v1/jobs", headers=headers)).status_code == 200
    key_id = harness.acme.api_key.split("_")[1]
    harness.deps.tenants.revoke_key("acme", key_id)
    assert_error(await http.get("/v1/jobs", headers=headers), 401, "unauthorized")


async def test_disabled_tenant_is_refused(http: httpx.AsyncClient, harness: Harness) -> None:
    harness.deps.tenants.update("beta", disabled=True)
    response = await http.get("/v1/jobs", headers=harness.headers(harness.beta, "alice"))
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("user", [None, "", "has space", "x" * 129, "ünïcode".encode()])
async def test_missing_or_bad_user_header_is_422(
    http: httpx.AsyncClient, harness: Harness, user: str | bytes | None
) -> None:
    headers: dict[bytes, bytes] = {b"Authorization": f"Bearer {harness.acme.api_key}".encode()}
    if user is not None:
        headers[b"X-User-ID"] = user.encode() if isinstance(user, str) else user
    for response in (
        await http.post("/v1/jobs", json=body(), headers=headers),
        await http.get("/v1/jobs", headers=headers),
        await http.get("/v1/jobs/job_x", headers=headers),
    ):
        error = assert_error(response, 422, "validation_error")
        assert ["header", "X-User-ID"] in [d["loc"] for d in error["details"]]


# ---- submitting ------------------------------------------------------------------------------


async def test_submit_admits_and_queues(http: httpx.AsyncClient, harness: Harness) -> None:
    response = await submit(http, harness, metadata={"order": 7})
    assert response.status_code == 202, response.text
    view = response.json()
    assert view["status"] == "queued" and view["metadata"] == {"order": 7}
    assert response.headers["location"] == f"/v1/jobs/{view['id']}"
    job = harness.deps.jobs.get(view["id"])
    assert (job.tenant_id, job.user_id) == (harness.acme.id, "alice")
    assert harness.deps.queue(Stage.RENDER).len() == 1  # no inputs: straight to render


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"workflow": {}}, "workflow"),
        ({}, "workflow"),
        ({"workflow": []}, "workflow"),
        ({"workflow": WORKFLOW, "surprise": 1}, "surprise"),
        (
            {"workflow": WORKFLOW, "inputs": [{"name": "../x", "url": "https://e.com/a.png"}]},
            "inputs",
        ),
        ({"workflow": WORKFLOW, "timeout_s": 0}, "timeout_s"),
    ],
)
async def test_malformed_bodies_are_422_with_the_field(
    http: httpx.AsyncClient, harness: Harness, payload: dict[str, Any], field: str
) -> None:
    response = await http.post(
        "/v1/jobs", json=payload, headers=harness.headers(harness.acme, "alice")
    )
    error = assert_error(response, 422, "validation_error")
    assert any(d["loc"][:2] == ["body", field] for d in error["details"]), error


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1,2]", b"null", b"\xff\xfe"])
async def test_non_json_bodies_are_422(
    http: httpx.AsyncClient, harness: Harness, raw: bytes
) -> None:
    response = await http.post(
        "/v1/jobs", content=raw, headers=harness.headers(harness.acme, "alice")
    )
    assert_error(response, 422, "validation_error")


async def test_unknown_node_type_is_400_naming_it(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    workflow = {**WORKFLOW, "3": {"class_type": "NoSuchNode", "inputs": {}}}
    response = await submit(http, harness, workflow=workflow)
    error = assert_error(response, 400, "invalid_workflow")
    assert "NoSuchNode" in error["message"]
    assert harness.deps.queue(Stage.FETCH).len() == harness.deps.queue(Stage.RENDER).len() == 0


async def test_a_missing_required_input_is_400_naming_node_and_input_before_any_queue(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    workflow = copy.deepcopy(WORKFLOW)
    del workflow["1"]["inputs"]["color"]
    error = assert_error(await submit(http, harness, workflow=workflow), 400, "invalid_workflow")
    assert (error["node_id"], error["field"]) == ("1", "color")
    assert error["node_errors"]["1"]["class_type"] == "EmptyImage"
    assert error["node_errors"]["1"]["errors"][0]["type"] == "required_input_missing"
    # The same refusal for an item of a batch, the others admitted
    batch = {"jobs": [{"workflow": WORKFLOW}, {"workflow": workflow}]}
    response = await http.post(
        "/v1/jobs/batch", json=batch, headers=harness.headers(harness.acme, "alice")
    )
    results = response.json()["results"]
    assert [r["status"] for r in results] == [202, 400]
    assert results[1]["error"]["node_errors"]["1"]["dependent_outputs"] == ["2"]
    assert harness.deps.queue(Stage.RENDER).len() == 1


async def test_ui_format_workflow_is_400(http: httpx.AsyncClient, harness: Harness) -> None:
    response = await submit(http, harness, workflow={"nodes": [], "links": [], "version": 0.4})
    assert_error(response, 400, "invalid_workflow")


async def test_body_user_id_must_match_the_header(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    assert_error(await submit(http, harness, user_id="bob"), 403, "user_mismatch")
    assert (await submit(http, harness, user_id="alice")).status_code == 202


@pytest.mark.parametrize("where", ["input", "webhook"])
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "https://169.254.169.254/x",
        "file:///etc/passwd",
        "https://user@example.com/a.png",
    ],
)
async def test_refused_urls_are_422_saying_why(
    http: httpx.AsyncClient, harness: Harness, where: str, url: str
) -> None:
    extra = (
        {"inputs": [{"name": "a.png", "url": url}]} if where == "input" else {"webhook_url": url}
    )
    error = assert_error(await submit(http, harness, **extra), 422, "url_refused")
    assert len(error["message"]) > 10


async def test_webhook_events_are_checked_and_kept(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    hook = {"webhook_url": "https://hooks.example.com/h"}
    error = assert_error(
        await submit(http, harness, **hook, webhook_events=["job.started", "job.typo"]),
        400,
        "invalid_request",
    )
    assert "job.typo" in error["message"] and "job.progress" in error["message"]
    events = ["job.started", "job.progress", "job.completed"]
    response = await submit(http, harness, **hook, webhook_events=events)
    assert response.status_code == 202, response.text
    assert harness.deps.jobs.get(response.json()["id"]).webhook_events == events


async def test_body_over_the_limit_is_413_by_content_length(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    big = body(metadata={"pad": "x" * 70_000})
    response = await http.post("/v1/jobs", json=big, headers=harness.headers(harness.acme, "a"))
    assert_error(response, 413, "request_too_large")


async def test_a_content_length_of_non_ascii_digits_is_400(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    # b"\xb9" reads as "\u00b9" (superscript one) in latin-1: a digit to str.isdigit(),
    # not to int(); it was a 500.
    headers = [(k.encode(), v.encode()) for k, v in harness.headers(harness.acme, "a").items()]
    request = httpx.Request(
        "POST",
        "http://testserver/v1/jobs",
        headers=[(b"content-length", b"\xb9"), *headers],
        content=b"{}",
    )
    response = await http.send(request)
    assert response.status_code == 400, response.text
    assert "Traceback" not in response.text


async def test_node_ids_of_non_ascii_digits_are_plain_names(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    # Ordered as names, not numbers: int("\u00b2") raises (it was a 500).
    save = WORKFLOW["2"] | {"inputs": WORKFLOW["2"]["inputs"] | {"images": ["\u00b2", 0]}}
    response = await submit(http, harness, workflow={"\u00b2": WORKFLOW["1"], "2": save})
    assert response.status_code == 202, response.text
    # A broken link makes the checks name (so sort) the nodes: a 400 naming the node.
    broken = {"\u00b2": WORKFLOW["1"], "2": WORKFLOW["2"]}
    response = await submit(http, harness, workflow=broken)
    assert_error(response, 400, "invalid_workflow")


async def test_body_over_the_limit_is_413_without_content_length(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"workflow": {"1": {"class_type": "' + b"x" * 10_000
        for _ in range(100):
            sent += 1
            yield b"x" * 10_000

    response = await http.post(
        "/v1/jobs", content=chunks(), headers=harness.headers(harness.acme, "alice")
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "request_too_large")


async def test_too_many_nodes_is_refused(http: httpx.AsyncClient, harness: Harness) -> None:
    workflow = {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(1, 600)}
    response = await submit(http, harness, workflow=workflow)
    assert response.status_code in (400, 422)
    assert response.json()["error"]["code"] in ("invalid_workflow", "validation_error")


# ---- idempotency -----------------------------------------------------------------------------


async def test_idempotency_key_replays_and_conflicts(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    headers = {**harness.headers(harness.acme, "alice"), "Idempotency-Key": "order-1"}
    first = await http.post("/v1/jobs", json=body(), headers=headers)
    again = await http.post("/v1/jobs", json=body(), headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    other = await http.post("/v1/jobs", json=body(metadata={"x": 1}), headers=headers)
    assert_error(other, 409, "idempotency_conflict")
    # Keys are per tenant: beta's "order-1" is a different key.
    beta = {**harness.headers(harness.beta, "alice"), "Idempotency-Key": "order-1"}
    assert (await http.post("/v1/jobs", json=body(), headers=beta)).status_code == 202


async def test_another_users_idempotency_key_gets_a_new_job_and_reveals_nothing(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    alice = {**harness.headers(harness.acme, "alice"), "Idempotency-Key": "order-1"}
    bob = {**harness.headers(harness.acme, "bob"), "Idempotency-Key": "order-1"}
    first = await http.post("/v1/jobs", json=body(), headers=alice)
    same_body = await http.post("/v1/jobs", json=body(), headers=bob)
    other_body = await http.post("/v1/jobs", json=body(metadata={"x": 1}), headers=bob)
    assert (first.status_code, same_body.status_code) == (202, 202)
    assert same_body.json()["id"] != first.json()["id"]
    # Bob's key is his own: another body conflicts with Bob's job only, never Alice's.
    assert_error(other_body, 409, "idempotency_conflict")
    assert first.json()["id"] not in other_body.text
    replay = await http.post("/v1/jobs", json=body(), headers=alice)
    assert (replay.status_code, replay.json()["id"]) == (200, first.json()["id"])


async def test_idempotency_key_over_255_chars_is_422(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    headers = {**harness.headers(harness.acme, "alice"), "Idempotency-Key": "k" * 256}
    error = assert_error(
        await http.post("/v1/jobs", json=body(), headers=headers), 422, "validation_error"
    )
    assert ["header", "Idempotency-Key"] in [d["loc"] for d in error["details"]]


# ---- limits ----------------------------------------------------------------------------------


async def test_user_cap_is_429_with_rate_limit_headers(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    for _ in range(5):
        assert (await submit(http, harness)).status_code == 202
    response = await submit(http, harness)
    error = assert_error(response, 429, "user_concurrency_limit")
    assert error["limit"] == 5
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-policy"] == '"user-active-jobs";q=5'
    assert response.headers["ratelimit"].startswith('"user-active-jobs";r=0;t=')
    # Another user of the same tenant is not affected.
    assert (await submit(http, harness, user="bob")).status_code == 202


async def test_cancelling_frees_a_slot(http: httpx.AsyncClient, harness: Harness) -> None:
    ids = [(await submit(http, harness)).json()["id"] for _ in range(5)]
    assert (await submit(http, harness)).status_code == 429
    await http.delete(f"/v1/jobs/{ids[0]}", headers=harness.headers(harness.acme, "alice"))
    assert (await submit(http, harness)).status_code == 202


async def test_rate_limit_is_429_with_window(settings_factory: SettingsFactory) -> None:
    harness = make_harness(settings_factory(public_url="http://testserver"), beta_rate=2)
    transport = httpx.ASGITransport(app=create_app(harness.deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        codes = [
            (await submit(http, harness, tenant="beta", user=f"u{i}")).status_code for i in range(2)
        ]
        response = await submit(http, harness, tenant="beta", user="u9")
    assert codes == [202, 202]
    assert_error(response, 429, "rate_limited")
    assert response.headers["ratelimit-policy"] == '"tenant-rate";q=2;w=60'
    assert 1 <= int(response.headers["retry-after"]) <= 60


# ---- reading, cancelling, listing across tenants and users -----------------------------------


async def test_reads_are_scoped_to_tenant_and_user(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    job_id = (await submit(http, harness)).json()["id"]
    own = await http.get(f"/v1/jobs/{job_id}", headers=harness.headers(harness.acme, "alice"))
    assert own.status_code == 200 and own.json()["id"] == job_id
    for headers in (harness.headers(harness.acme, "bob"), harness.headers(harness.beta, "alice")):
        assert_error(await http.get(f"/v1/jobs/{job_id}", headers=headers), 404, "not_found")
        assert_error(await http.delete(f"/v1/jobs/{job_id}", headers=headers), 404, "not_found")
        listed = (await http.get("/v1/jobs", headers=headers)).json()
        assert listed == {"jobs": [], "next_cursor": None}
    assert harness.deps.jobs.get(job_id).status is JobStatus.QUEUED


@pytest.mark.parametrize("job_id", ["job_missing", "..", "a.b", "x" * 300, "%2e%2e"])
async def test_unknown_ids_are_404(http: httpx.AsyncClient, harness: Harness, job_id: str) -> None:
    headers = harness.headers(harness.acme, "alice")
    assert_error(await http.get(f"/v1/jobs/{job_id}", headers=headers), 404, "not_found")


async def test_cancel_then_cancel_again(http: httpx.AsyncClient, harness: Harness) -> None:
    headers = harness.headers(harness.acme, "alice")
    job_id = (await submit(http, harness)).json()["id"]
    response = await http.delete(f"/v1/jobs/{job_id}", headers=headers)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"]["code"] == "cancelled"
    error = assert_error(
        await http.delete(f"/v1/jobs/{job_id}", headers=headers), 409, "already_terminal"
    )
    assert error["status"] == "cancelled"


async def test_list_is_newest_first_paginated_and_filtered(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    headers = harness.headers(harness.acme, "alice")
    ids = []
    for _ in range(5):
        ids.append((await submit(http, harness)).json()["id"])
        harness.clock.advance(1)
    await http.delete(f"/v1/jobs/{ids[1]}", headers=headers)
    (await submit(http, harness, user="bob")).raise_for_status()

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await http.get("/v1/jobs", params=params, headers=headers)).json()
        assert len(page["jobs"]) <= 2
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    cancelled = (await http.get("/v1/jobs", params={"status": "cancelled"}, headers=headers)).json()
    assert [job["id"] for job in cancelled["jobs"]] == [ids[1]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "x"},
        {"cursor": "abc"},
        {"cursor": "-1"},
        {"cursor": "9" * 13},
        {"status": "bogus"},
    ],
)
async def test_bad_list_parameters_are_422(
    http: httpx.AsyncClient, harness: Harness, params: dict[str, Any]
) -> None:
    response = await http.get(
        "/v1/jobs", params=params, headers=harness.headers(harness.acme, "alice")
    )
    assert_error(response, 422, "validation_error")


# ---- outputs: fresh signed URLs, served by /files -------------------------------------------


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(("", "", parts.path, parts.query, ""))


async def test_output_urls_are_fresh_on_every_read_and_all_work(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    # Given a completed job with one stored output
    headers = harness.headers(harness.acme, "alice")
    job_id = (await submit(http, harness)).json()["id"]
    harness.complete(job_id, {"result.png": b"\x89PNG fake bytes"})
    # When it is read twice, a little apart
    first = (await http.get(f"/v1/jobs/{job_id}", headers=headers)).json()
    harness.clock.advance(5)
    second = (await http.get(f"/v1/jobs/{job_id}", headers=headers)).json()
    # Then each read carries a different link, and both download the file
    assert first["status"] == second["status"] == "completed"
    url1, url2 = first["outputs"][0]["url"], second["outputs"][0]["url"]
    assert url1 != url2
    for url in (url1, url2):
        assert url.startswith("http://testserver/files/")
        response = await http.get(_path_of(url))
        assert response.status_code == 200
        assert response.content == b"\x89PNG fake bytes"
        assert response.headers["content-type"] == "image/png"
        assert response.headers["content-disposition"].startswith("attachment")
        assert response.headers["x-content-type-options"] == "nosniff"
    # And the list shows freshly signed links too
    listed = (await http.get("/v1/jobs", headers=headers)).json()
    assert listed["jobs"][0]["outputs"][0]["url"].startswith("http://testserver/files/")


async def test_bad_and_expired_file_links_are_refused(
    http: httpx.AsyncClient, harness: Harness
) -> None:
    headers = harness.headers(harness.acme, "alice")
    job_id = (await submit(http, harness)).json()["id"]
    refs = harness.complete(job_id, {"out.png": b"png"})
    url = (await http.get(f"/v1/jobs/{job_id}", headers=headers)).json()["outputs"][0]["url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    tampered = {**query, "sig": "0" * 64}
    response = await http.get(parts.path, params=tampered)
    assert response.status_code == 403 and response.json()["error"]["code"]
    other_type = {**query, "content_type": "text/html"}
    assert (await http.get(parts.path, params=other_type)).status_code == 403
    assert (await http.get(parts.path)).status_code == 403
    assert (await http.get(parts.path, params={**query, "expires": "soon"})).status_code == 403

    harness.deps.objects.delete_keys([refs[0].key])
    assert_error(await http.get(_path_of(url)), 404, "not_found")
    harness.clock.advance(harness.settings.presign_expiry_s + 1)
    response = await http.get(_path_of(url))
    assert response.status_code == 403
    assert "expired" in json.dumps(response.json())


async def test_file_links_cannot_escape_the_store(http: httpx.AsyncClient) -> None:
    for path in (
        "/files/../state.sqlite3",
        "/files/%2e%2e/signing.key",
        "/files/.tmp/x",
        "/files/outputs//x",
    ):
        response = await http.get(path, params={"expires": "1", "sig": "0" * 64})
        assert response.status_code in (403, 404)
        assert "error" in response.json()
