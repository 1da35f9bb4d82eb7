"""Workflow templates over HTTP: register, version, run, refuse before admission, batch."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.adapters.comfy import catalog as node_catalog
from app.api.ingress import create_app
from app.core.models import Stage
from tests.integration.ingress_harness import WORKFLOW, Harness, make_harness
from tests.support import templates as fx
from tests.support.settings import SettingsFactory

PHOTO = {"url": "https://cdn.example.com/face.png"}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


@pytest.fixture
def harness(settings_factory: SettingsFactory) -> Harness:
    harness = make_harness(
        settings_factory(
            public_url="http://testserver", max_request_bytes=256_000, max_batch_jobs=8
        )
    )
    kv = harness.deps.backend.kv(node_catalog.CATALOG_DICT)
    node_catalog.publish(kv, fx.object_info(), harness.clock())
    return harness


@pytest.fixture
def http(harness: Harness) -> Iterator[TestClient]:
    with TestClient(create_app(harness.deps)) as client:
        yield client


def auth(harness: Harness, user: str = "alice", tenant: str = "acme") -> dict[str, str]:
    return harness.headers(harness.acme if tenant == "acme" else harness.beta, user)


def push(http: TestClient, harness: Harness, **overrides: Any) -> Any:
    body = {"name": "portrait", "workflow": fx.graph(), "inputs": fx.spec(), **overrides}
    return http.post("/v1/workflows", json=body, headers=auth(harness))


def run(http: TestClient, harness: Harness, workflow_id: str = "portrait", **inputs: Any) -> Any:
    body = {"workflow_id": workflow_id, "inputs": {"prompt": "a cat", "photo": PHOTO, **inputs}}
    return http.post("/v1/jobs", json=body, headers=auth(harness))


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


# ---- registration and versions ----------------------------------------------------------


def test_register_answers_with_the_version_and_its_json_schema(
    http: TestClient, harness: Harness
) -> None:
    response = push(http, harness, description="Portraits")
    assert response.status_code == 201, response.text
    view = response.json()
    assert (view["id"], view["version"], view["latest_version"]) == ("portrait@1", 1, 1)
    schema = view["input_schema"]
    assert schema["required"] == ["photo", "prompt"]
    assert schema["properties"]["steps"]["maximum"] == 50
    assert view["inputs"]["size"]["places"] == [["4", "width"], ["4", "height"]]


def test_a_bad_schema_is_a_400_naming_input_node_and_field(
    http: TestClient, harness: Harness
) -> None:
    bad = fx.spec(steps={"type": "integer", "places": [["5", "steps"]], "maximum": 99999})
    error = error_of(push(http, harness, inputs=bad), 400, "invalid_template")
    assert (error["input"], error["node_id"], error["field"]) == ("steps", "5", "steps")
    assert "over the 10000" in error["message"]
    assert error["problems"][0]["reason"].startswith("maximum 99999")
    assert http.get("/v1/workflows", headers=auth(harness)).json()["workflows"] == []


def test_a_bad_graph_is_refused_with_the_workflow_checks(
    http: TestClient, harness: Harness
) -> None:
    graph = fx.graph()
    graph["9"]["inputs"]["images"] = ["42", 0]
    error = error_of(push(http, harness, workflow=graph), 400, "invalid_workflow")
    assert "node 9 input 'images' links to node 42" in error["message"]
    body = {"name": "Bad Name!", "workflow": fx.graph(), "inputs": {}}
    error_of(http.post("/v1/workflows", json=body, headers=auth(harness)), 422, "validation_error")


def test_registering_without_a_node_catalog_is_a_503(http: TestClient, harness: Harness) -> None:
    harness.deps.backend.kv(node_catalog.CATALOG_DICT).pop(node_catalog.CATALOG_KEY)
    harness.deps.catalog_from_comfy = False
    response = push(http, harness)
    error_of(response, 503, "comfyui_unavailable")
    assert response.headers["retry-after"]


def test_versions_are_immutable_and_latest_moves(http: TestClient, harness: Harness) -> None:
    push(http, harness)
    second = fx.spec(steps={"type": "integer", "places": [["5", "steps"]], "default": 8})
    assert push(http, harness, inputs=second).json()["id"] == "portrait@2"
    assert push(http, harness, make_latest=False).json()["id"] == "portrait@3"
    headers = auth(harness)

    def steps_of(workflow_id: str) -> Any:
        view = http.get(f"/v1/workflows/{workflow_id}", headers=headers).json()
        return view["version"], view["input_schema"]["properties"]["steps"]["default"]

    assert steps_of("portrait") == (2, 8)  # push 3 did not move latest
    assert steps_of("portrait@latest") == (2, 8)
    assert steps_of("portrait@1") == (1, 20)
    moved = http.put("/v1/workflows/portrait/latest", json={"version": 1}, headers=headers)
    assert moved.status_code == 200 and moved.json()["latest_version"] == 1
    assert steps_of("portrait") == (1, 20)
    listed = http.get("/v1/workflows", headers=headers).json()["workflows"]
    assert listed == [
        {"name": "portrait", "latest_version": 1, "versions": [1, 2, 3], "description": ""}
    ]
    # Deleting the latest version moves latest to the newest left; numbers are never reused
    assert http.delete("/v1/workflows/portrait@1", headers=headers).json() == {
        "deleted": ["portrait@1"]
    }
    assert steps_of("portrait") == (3, 20)
    error_of(http.get("/v1/workflows/portrait@1", headers=headers), 404, "template_not_found")
    assert push(http, harness).json()["id"] == "portrait@4"
    assert http.delete("/v1/workflows/portrait", headers=headers).json() == {
        "deleted": ["portrait@2", "portrait@3", "portrait@4"]
    }
    error_of(http.get("/v1/workflows/portrait", headers=headers), 404, "template_not_found")
    error_of(run(http, harness), 404, "template_not_found")


def test_templates_are_per_tenant(http: TestClient, harness: Harness) -> None:
    push(http, harness)
    other = auth(harness, tenant="beta")
    error_of(http.get("/v1/workflows/portrait", headers=other), 404, "template_not_found")
    assert http.get("/v1/workflows", headers=other).json()["workflows"] == []
    body = {"workflow_id": "portrait", "inputs": {"prompt": "x", "photo": PHOTO}}
    error_of(http.post("/v1/jobs", json=body, headers=other), 404, "template_not_found")
    error_of(http.get("/v1/workflows", headers={}), 401, "unauthorized")


# ---- runs ------------------------------------------------------------------------------


def test_a_run_stores_the_resolved_graph_and_names_the_template(
    http: TestClient, harness: Harness
) -> None:
    push(http, harness)
    response = run(http, harness, "portrait@1", seed=42, steps=30, sampler="dpmpp_2m", size=640,
                   model="sdxl.safetensors", cfg=4.5, flag=False)  # fmt: skip
    assert response.status_code == 202, response.text
    view = response.json()
    assert view["template"]["id"] == "portrait@1"
    assert view["template"]["inputs"]["seed"] == 42
    stored = harness.deps.jobs.workflow(view["id"])
    ks: Any = stored["5"]
    assert (ks["inputs"]["seed"], ks["inputs"]["steps"], ks["inputs"]["cfg"]) == (42, 30, 4.5)
    assert ks["inputs"]["sampler_name"] == "dpmpp_2m"
    assert stored["7"] == {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    assert stored["1"]["inputs"]["ckpt_name"] == "sdxl.safetensors"  # type: ignore[index]
    assert stored["4"]["inputs"]["width"] == 640  # type: ignore[index]
    job = harness.deps.jobs.get(view["id"])
    assert [(i.name, i.url) for i in job.inputs] == [("photo.png", PHOTO["url"])]
    # And the view says so on every read
    again = http.get(f"/v1/jobs/{view['id']}", headers=auth(harness)).json()
    assert again["template"]["name"] == "portrait" and again["template"]["version"] == 1


def test_a_run_takes_media_from_an_upload_or_inline_data(
    http: TestClient, harness: Harness
) -> None:
    push(http, harness)
    posted = http.post("/v1/uploads", content=PNG, headers=auth(harness))
    assert posted.status_code == 201, posted.text
    upload_id = posted.json()["upload_id"]

    by_upload = run(http, harness, photo={"upload_id": upload_id})
    inline = run(http, harness, photo={"data": base64.b64encode(PNG).decode()})
    elsewhere = http.post(
        "/v1/jobs",
        json={
            "workflow_id": "portrait",
            "inputs": {"prompt": "x", "photo": {"upload_id": upload_id}},
        },
        headers=auth(harness, user="bob"),
    )

    assert by_upload.status_code == 202, by_upload.text
    (spec,) = harness.deps.jobs.get(by_upload.json()["id"]).inputs
    assert (spec.name, spec.upload_id) == ("photo.png", upload_id)
    assert inline.status_code == 202, inline.text
    (spec,) = harness.deps.jobs.get(inline.json()["id"]).inputs
    assert spec.upload_id is not None and spec.upload_id != upload_id  # stored as its own upload
    assert "base64 characters" in inline.json()["template"]["inputs"]["photo"]["data"]
    error_of(elsewhere, 404, "upload_not_found")  # another user's upload reads as missing


def test_a_run_takes_webhook_events_and_refuses_unknown_ones(
    http: TestClient, harness: Harness
) -> None:
    assert push(http, harness).status_code == 201
    body: dict[str, Any] = {
        "workflow_id": "portrait",
        "inputs": {"prompt": "a cat", "photo": PHOTO},
        "webhook_url": "https://hooks.example.com/h",
        "webhook_events": ["job.progress"],
    }
    response = http.post("/v1/jobs", json=body, headers=auth(harness))
    assert response.status_code == 202, response.text
    assert harness.deps.jobs.get(response.json()["id"]).webhook_events == ["job.progress"]
    body["webhook_events"] = ["progress"]
    error = error_of(
        http.post("/v1/jobs", json=body, headers=auth(harness)), 400, "invalid_request"
    )
    assert "'progress'" in error["message"]


def test_a_random_seed_is_drawn_and_recorded(http: TestClient, harness: Harness) -> None:
    push(http, harness)
    view = run(http, harness).json()
    seed = view["template"]["inputs"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**53
    assert harness.deps.jobs.workflow(view["id"])["5"]["inputs"]["seed"] == seed  # type: ignore[index]


@pytest.mark.parametrize(
    ("inputs", "name", "status", "code"),
    [
        ({"prompt": 3}, "prompt", 400, "invalid_input"),
        ({"steps": 51}, "steps", 400, "invalid_input"),
        ({"cfg": "x"}, "cfg", 400, "invalid_input"),
        ({"seed": "lucky"}, "seed", 400, "invalid_input"),
        ({"sampler": "magic"}, "sampler", 400, "invalid_input"),
        ({"model": "other.ckpt"}, "model", 400, "invalid_input"),
        ({"flag": 1}, "flag", 400, "invalid_input"),
        ({"photo": "https://cdn.example.com/a.png"}, "photo", 400, "invalid_input"),
        ({"photo": {"url": "http://127.0.0.1/a.png"}}, "photo", 400, "invalid_input"),
        ({"photo": {"url": "file:///etc/passwd"}}, "photo", 400, "invalid_input"),
        ({"size": 4096}, "size", 400, "invalid_input"),
        ({"nope": 1}, "nope", 400, "invalid_input"),
    ],
)
def test_bad_inputs_are_refused_before_admission_naming_the_input(
    http: TestClient, harness: Harness, inputs: dict[str, Any], name: str, status: int, code: str
) -> None:
    push(http, harness)
    error = error_of(run(http, harness, **inputs), status, code)
    assert error["input"] == name
    assert f"input '{name}'" in error["message"]
    assert queued(harness) == 0
    assert http.get("/v1/jobs", headers=auth(harness)).json()["jobs"] == []


def test_a_missing_input_and_a_bad_workflow_id_are_refused(
    http: TestClient, harness: Harness
) -> None:
    push(http, harness)
    body = {"workflow_id": "portrait", "inputs": {"prompt": "x"}}
    error = error_of(http.post("/v1/jobs", json=body, headers=auth(harness)), 400, "invalid_input")
    assert error["input"] == "photo" and "is required" in error["message"]
    body = {"workflow_id": "portrait@0", "inputs": {}}
    error_of(http.post("/v1/jobs", json=body, headers=auth(harness)), 422, "validation_error")
    body = {"workflow_id": "portrait", "workflow": WORKFLOW}
    error_of(http.post("/v1/jobs", json=body, headers=auth(harness)), 422, "validation_error")


def test_deleting_a_version_does_not_break_its_queued_jobs(
    http: TestClient, harness: Harness
) -> None:
    push(http, harness)
    job_id = run(http, harness, seed=7).json()["id"]
    http.delete("/v1/workflows/portrait", headers=auth(harness))
    assert harness.deps.jobs.workflow(job_id)["5"]["inputs"]["seed"] == 7  # type: ignore[index]
    view = http.get(f"/v1/jobs/{job_id}", headers=auth(harness)).json()
    assert view["status"] == "queued" and view["template"]["id"] == "portrait@1"


def test_an_idempotent_retry_of_a_random_seed_run_replays(
    http: TestClient, harness: Harness
) -> None:
    push(http, harness)
    body = {"workflow_id": "portrait", "inputs": {"prompt": "x", "photo": PHOTO}}
    headers = {**auth(harness), "Idempotency-Key": "k1"}
    first = http.post("/v1/jobs", json=body, headers=headers)
    again = http.post("/v1/jobs", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]


def test_templates_only_refuses_raw_graphs_and_runs_templates(
    http: TestClient, harness: Harness
) -> None:
    harness.deps.tenants.update("acme", templates_only=True)
    push(http, harness)
    response = http.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=auth(harness))
    error = error_of(response, 403, "templates_only")
    assert "workflow_id" in error["message"]
    assert run(http, harness).status_code == 202
    batch = {"jobs": [{"workflow": WORKFLOW}]}
    result = http.post("/v1/jobs/batch", json=batch, headers=auth(harness)).json()
    assert result["results"][0]["status"] == 403
    # Other tenants are not affected (the default is off)
    beta = http.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=auth(harness, tenant="beta"))
    assert beta.status_code == 202


# ---- batch -----------------------------------------------------------------------------


def test_a_batch_admits_each_item_against_the_caps(http: TestClient, harness: Harness) -> None:
    push(http, harness)
    items: list[dict[str, Any]] = [{"workflow": WORKFLOW} for _ in range(3)]
    items.append({"workflow_id": "portrait", "inputs": {"prompt": "x", "photo": PHOTO}})
    items.append({"workflow_id": "portrait", "inputs": {"prompt": 1, "photo": PHOTO}})
    items.append({"workflow_id": "portrait", "inputs": {"prompt": "y", "photo": PHOTO}})
    items.append({"workflow": WORKFLOW})  # over the cap of 5
    items.append({"bogus": True})
    response = http.post("/v1/jobs/batch", json={"jobs": items}, headers=auth(harness))
    assert response.status_code == 200, response.text
    result = response.json()
    statuses = [r["status"] for r in result["results"]]
    assert statuses == [202, 202, 202, 202, 400, 202, 429, 422]
    assert (result["accepted"], result["refused"]) == (5, 3)
    assert result["results"][4]["error"]["input"] == "prompt"
    capped = result["results"][6]["error"]
    assert capped["code"] == "user_concurrency_limit" and capped["retry_after_s"] == 5
    assert response.headers["retry-after"] == "5"
    assert queued(harness) == 5


def test_batch_idempotency_is_per_item(http: TestClient, harness: Harness) -> None:
    items = [{"workflow": WORKFLOW, "idempotency_key": "a"}, {"workflow": WORKFLOW}]
    first = http.post("/v1/jobs/batch", json={"jobs": items}, headers=auth(harness)).json()
    again = http.post("/v1/jobs/batch", json={"jobs": items[:1]}, headers=auth(harness)).json()
    assert [r["status"] for r in first["results"]] == [202, 202]
    assert again["results"][0]["status"] == 200
    assert again["results"][0]["job"]["id"] == first["results"][0]["job"]["id"]
    changed = [{"workflow": {**WORKFLOW, "3": WORKFLOW["2"]}, "idempotency_key": "a"}]
    conflict = http.post("/v1/jobs/batch", json={"jobs": changed}, headers=auth(harness)).json()
    assert conflict["results"][0]["error"]["code"] == "idempotency_conflict"


def test_a_batch_over_the_limit_is_refused_whole(http: TestClient, harness: Harness) -> None:
    items = [{"workflow": WORKFLOW}] * 9
    response = http.post("/v1/jobs/batch", json={"jobs": items}, headers=auth(harness))
    error_of(response, 422, "batch_too_large")
    assert queued(harness) == 0
    error_of(http.post("/v1/jobs/batch", json={"jobs": []}, headers=auth(harness)), 422,
             "validation_error")  # fmt: skip


# ---- OpenAPI ---------------------------------------------------------------------------


def test_openapi_documents_templates_and_batch(http: TestClient) -> None:
    schema = http.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"post", "get"} <= set(paths["/v1/workflows"])
    assert {"get", "delete"} <= set(paths["/v1/workflows/{workflow_id}"])
    assert "put" in paths["/v1/workflows/{name}/latest"]
    assert "post" in paths["/v1/jobs/batch"]
    components = schema["components"]["schemas"]
    for name in (
        "TemplateJobRequest",
        "WorkflowCreate",
        "InputDef",
        "BatchRequest",
        "TemplateView",
    ):
        assert name in components, name
    one_of = paths["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/TemplateJobRequest"} in one_of["oneOf"]
    assert "template" in components["JobView"]["properties"]


def queued(harness: Harness) -> int:
    """Admitted jobs waiting for their first stage (render when a job has no inputs)."""
    return harness.deps.queue(Stage.FETCH).len() + harness.deps.queue(Stage.RENDER).len()
