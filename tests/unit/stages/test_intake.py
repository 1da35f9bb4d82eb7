"""The intake stage in process: queued requests admitted, refused and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.errors import ComfyUnavailable, InvalidRequest, InvalidWorkflow
from app.core.models import JobStatus, Stage
from app.core.schemas import IntakeMessage, JobRequest
from app.engine.pipeline import Submission
from app.stages import intake
from tests.unit.stages.fakes import World, make_world
from tests.unit.stages.helpers import PHOTO_URL, WORKFLOW

#: Queued job ids as clients make them (`job_` and 32 hex digits); others are refused.
Q1 = "job_" + "1" * 32
Q2 = "job_" + "2" * 32

OBJECT_INFO = {
    "LoadImage": {"input": {"required": {"image": []}}, "output": ["IMAGE", "MASK"]},
    "SaveImage": {"input": {"required": {"images": []}}, "output": [], "output_node": True},
}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


@pytest.fixture
def api_key(world: World) -> str:
    return world.deps.tenants.create("acme", max_active_jobs_per_user=1).api_key


def request(**overrides: object) -> JobRequest:
    values: dict[str, object] = {
        "workflow": WORKFLOW,
        "inputs": [{"name": "face.png", "url": PHOTO_URL}],
    }
    values.update(overrides)
    return JobRequest.model_validate(values)


def put(world: World, api_key: str, job_id: str = Q1, **fields: object) -> None:
    values: dict[str, object] = {
        "job_id": job_id,
        "api_key": api_key,
        "user_id": "u1",
        "request": request(),
    }
    values.update(fields)
    world.deps.queue(Stage.INTAKE).put(IntakeMessage.model_validate(values).model_dump_json())


def test_a_queued_request_is_admitted_under_its_id_and_fetch_is_next(
    world: World, api_key: str
) -> None:
    world.comfy.object_info_answer = OBJECT_INFO
    put(world, api_key)
    assert world.step(Stage.INTAKE) == 1
    job = world.job(Q1)
    assert job.status is JobStatus.QUEUED and job.user_id == "u1"
    assert [spec.url for spec in job.inputs] == [PHOTO_URL]
    assert world.queued(Stage.FETCH) == 1


def test_locally_intake_publishes_the_catalog_it_asked_comfy_for(
    world: World, api_key: str
) -> None:
    world.comfy.object_info_answer = OBJECT_INFO
    put(world, api_key, Q1)
    put(world, api_key, Q2, user_id="u2")
    world.step(Stage.INTAKE)
    assert world.comfy.object_info_calls == 1  # the second request used the published one
    catalog = world.deps.catalog.load(3600, world.clock.now)
    assert catalog is not None and "SaveImage" in catalog


def test_an_unknown_node_is_refused_against_the_catalog(world: World, api_key: str) -> None:
    world.comfy.object_info_answer = OBJECT_INFO
    workflow = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    put(world, api_key, request=request(workflow=workflow, inputs=[]))
    world.step(Stage.INTAKE)
    job = world.job(Q1)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code == "invalid_workflow" and "NoSuchNode" in job.error.message
    assert world.queued(Stage.FETCH) == 0


def test_without_catalog_from_comfy_only_a_published_catalog_is_used(
    world: World, api_key: str
) -> None:
    world.deps.catalog_from_comfy = False  # as on Modal: render containers publish it
    workflow = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    sub = Submission(tenant=world.deps.tenants.resolve("acme"), user_id="u1", request=request())
    assert intake.node_catalog(world.deps) is None
    assert world.comfy.object_info_calls == 0
    world.deps.catalog.publish(OBJECT_INFO, world.clock.now)
    bad = Submission(sub.tenant, "u1", request(workflow=workflow, inputs=[]))
    with pytest.raises(InvalidWorkflow):
        intake.run(bad, world.deps)
    assert intake.run(sub, world.deps).status is JobStatus.QUEUED
    assert world.comfy.object_info_calls == 0


def test_comfy_down_means_structural_checks_only(world: World, api_key: str) -> None:
    world.comfy.object_info_answer = ComfyUnavailable()
    put(world, api_key)
    world.step(Stage.INTAKE)
    assert world.job(Q1).status is JobStatus.QUEUED
    assert world.deps.catalog.load(3600, world.clock.now) is None


def test_a_request_over_the_users_limit_is_recorded_as_failed(world: World, api_key: str) -> None:
    put(world, api_key, Q1)
    put(world, api_key, Q2)
    world.step(Stage.INTAKE)
    refused = world.job(Q2)
    assert refused.status is JobStatus.FAILED and refused.error is not None
    assert refused.error.code == "user_concurrency_limit"
    assert world.queued(Stage.FETCH) == 1


def test_an_idempotency_key_reused_with_another_body_is_a_conflict(
    world: World, api_key: str
) -> None:
    put(world, api_key, Q1, idempotency_key="k")
    put(world, api_key, Q2, idempotency_key="k", request=request(metadata={"other": 1}))
    world.step(Stage.INTAKE)
    conflicted = world.job(Q2)
    assert conflicted.error is not None and conflicted.error.code == "idempotency_conflict"


def test_a_refused_url_is_recorded_with_its_reason(world: World, api_key: str) -> None:
    put(
        world,
        api_key,
        request=request(inputs=[{"name": "face.png", "url": "http://plain.example"}]),
    )
    world.step(Stage.INTAKE)
    job = world.job(Q1)
    assert job.error is not None and job.error.code == "url_refused"


def test_an_unknown_key_or_a_malformed_message_leaves_no_job(world: World, api_key: str) -> None:
    put(world, "sk_not_a_key")
    world.deps.queue(Stage.INTAKE).put(json.dumps({"job_id": Q2, "api_key": api_key}))
    world.deps.queue(Stage.INTAKE).put("not json")
    assert world.step(Stage.INTAKE) == 3
    assert world.deps.jobs.find(Q1) is None and world.deps.jobs.find(Q2) is None
    assert world.queued(Stage.FETCH) == 0


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            {"inputs": [{"name": f"i{n}.png", "url": PHOTO_URL} for n in range(3)]},
            "too many inputs",
        ),
        ({"timeout_s": 99_999}, "over the limit"),
        ({"metadata": {"blob": "x" * 17_000}}, "metadata is"),
        ({"webhook_url": "http://hooks.example.com"}, "plain http"),
        ({"user_id": "someone-else"}, "does not match"),
        (
            {"webhook_url": "https://hooks.example.com/h", "webhook_events": ["job.finished"]},
            "unknown webhook event 'job.finished'",
        ),
        ({"webhook_events": ["job.started"]}, "needs a webhook_url"),
    ],
)
def test_requests_over_the_limits_are_refused_before_admission(
    tmp_path: Path, overrides: dict[str, object], words: str
) -> None:
    world = make_world(tmp_path, max_inputs=2, max_job_timeout_s=3600)
    tenant = world.deps.tenants.create("acme").tenant
    with pytest.raises(InvalidRequest, match=words):
        intake.run(Submission(tenant, "u1", request(**overrides)), world.deps)
    assert world.queued(Stage.FETCH) == 0


def test_a_bad_user_id_is_refused(world: World, api_key: str) -> None:
    put(world, api_key, user_id="no spaces allowed")
    world.step(Stage.INTAKE)
    job = world.job(Q1)
    assert job.error is not None and job.error.code == "invalid_request"


def test_a_replayed_request_is_not_fetched_twice(world: World, api_key: str) -> None:
    tenant = world.deps.tenants.resolve("acme")
    first = intake.run(Submission(tenant, "u1", request(), idempotency_key="k"), world.deps)
    again = intake.run(Submission(tenant, "u1", request(), idempotency_key="k"), world.deps)
    assert again.id == first.id
    assert world.queued(Stage.FETCH) == 1


def test_a_catalog_fetch_is_due_only_while_none_valid_is_published(world: World) -> None:
    # What decides whether POST /v1/jobs may run on the ingress event loop: only a fetch
    # from ComfyUI could block it.
    assert intake.catalog_fetch_due(world.deps)
    world.deps.catalog.publish(OBJECT_INFO, world.clock.now)
    assert not intake.catalog_fetch_due(world.deps)
    world.clock.now += world.deps.settings.object_info_ttl_s + 1  # aged out: asked again
    assert intake.catalog_fetch_due(world.deps)
    world.deps.catalog_from_comfy = False  # Modal: intake never asks ComfyUI itself
    assert not intake.catalog_fetch_due(world.deps)
