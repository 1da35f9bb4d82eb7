"""The Python client over the queues and dicts: enqueue -> intake -> get/wait/cancel."""

from __future__ import annotations

import copy
import threading

import pytest
from pydantic import SecretStr

from app.clients.queue_client import Client
from app.core.errors import (
    ClientError,
    InvalidNodes,
    InvalidRequest,
    InvalidWorkflow,
    JobAlreadyEnded,
    Unauthorized,
    UnknownJob,
    WaitTimeout,
)
from app.core.models import JobStatus, Stage
from app.core.schemas import IntakeMessage
from app.stages import drain as drain_stage
from tests.integration.ingress_harness import WORKFLOW, Harness, make_harness
from tests.support.settings import SettingsFactory


@pytest.fixture
def harness(settings_factory: SettingsFactory) -> Harness:
    return make_harness(settings_factory(public_url="http://testserver"), acme_cap=2)


@pytest.fixture
def woken(harness: Harness) -> list[Stage]:
    calls: list[Stage] = []
    harness.deps.waker = calls.append
    return calls


def client(harness: Harness, user: str = "alice", tenant: str = "acme") -> Client:
    keys = harness.acme if tenant == "acme" else harness.beta
    return Client(harness.deps, keys.api_key, user)


def test_enqueue_puts_a_message_and_wakes_intake(harness: Harness, woken: list[Stage]) -> None:
    job_id = client(harness).enqueue({"workflow": WORKFLOW}, idempotency_key="k1")
    raw = harness.deps.queue(Stage.INTAKE).get()
    assert raw is not None
    message = IntakeMessage.model_validate_json(raw)
    assert (message.job_id, message.user_id, message.idempotency_key) == (job_id, "alice", "k1")
    assert woken == [Stage.INTAKE]


def test_enqueued_job_is_admitted_by_intake_and_readable_by_its_owner_only(
    harness: Harness,
) -> None:
    # Given a job enqueued by alice and not yet taken by intake
    alice = client(harness)
    job_id = alice.enqueue({"workflow": WORKFLOW, "metadata": {"n": 1}})
    with pytest.raises(UnknownJob):
        alice.get(job_id)
    # When intake runs
    assert drain_stage(Stage.INTAKE, harness.deps) == 1
    # Then alice sees it queued (for render: it has no inputs), and nobody else sees it
    view = alice.get(job_id)
    assert view.status is JobStatus.QUEUED and view.metadata == {"n": 1}
    assert harness.deps.queue(Stage.RENDER).len() == 1  # no inputs: straight to render
    for other in (client(harness, "bob"), client(harness, tenant="beta")):
        with pytest.raises(UnknownJob):
            other.get(job_id)
        with pytest.raises(UnknownJob):
            other.cancel(job_id)


def test_refusals_at_intake_become_failed_jobs_under_the_same_id(harness: Harness) -> None:
    alice = client(harness)
    ids = [alice.enqueue({"workflow": WORKFLOW}) for _ in range(3)]  # cap is 2
    drain_stage(Stage.INTAKE, harness.deps)
    statuses = [alice.get(i).status for i in ids]
    assert statuses == [JobStatus.QUEUED, JobStatus.QUEUED, JobStatus.FAILED]
    capped = alice.get(ids[2]).error
    assert capped is not None and capped.code == "user_concurrency_limit"


def test_bad_key_and_bad_body_are_refused_before_queueing(harness: Harness) -> None:
    with pytest.raises(Unauthorized):
        Client(harness.deps, "csk_nope", "alice").enqueue({"workflow": WORKFLOW})
    with pytest.raises(InvalidRequest):
        client(harness).enqueue({"workflow": {}})
    with pytest.raises(InvalidRequest):
        client(harness).enqueue({"workflow": WORKFLOW}, idempotency_key="k" * 256)
    # The workflow checks of POST /v1/jobs, ComfyUI's input rules included, before the put
    missing = copy.deepcopy(WORKFLOW)
    del missing["1"]["inputs"]["width"]
    unknown = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    for workflow in (missing, unknown):
        with pytest.raises(InvalidWorkflow):
            client(harness).enqueue({"workflow": workflow})
    with pytest.raises(InvalidNodes) as caught:
        client(harness).enqueue({"workflow": missing})
    assert (caught.value.node_id, caught.value.field) == ("1", "width")
    assert list(harness.deps.intakes.all()) == []  # nothing for fail_stale to re-admit
    for bad_user in ("not a user id", "alice\n", ""):
        with pytest.raises(ClientError):
            Client(harness.deps, harness.acme.api_key, bad_user)
    assert harness.deps.queue(Stage.INTAKE).len() == 0


def test_wait_returns_the_final_view_or_times_out(harness: Harness) -> None:
    alice = client(harness)
    job_id = alice.enqueue({"workflow": WORKFLOW})
    with pytest.raises(WaitTimeout):
        alice.wait(job_id, timeout_s=0.2, poll_s=0.05)

    def finish_soon() -> None:
        drain_stage(Stage.INTAKE, harness.deps)
        harness.complete(job_id, {"a.png": b"png"})

    timer = threading.Timer(0.2, finish_soon)
    timer.start()
    try:
        seen: list[JobStatus] = []
        view = alice.wait(
            job_id, timeout_s=10, poll_s=0.05, on_update=lambda v: seen.append(v.status)
        )
    finally:
        timer.join()
    assert view.status is JobStatus.COMPLETED and seen[-1] is JobStatus.COMPLETED
    assert view.outputs[0].url.startswith("http://testserver/files/")


def test_cancel_then_cancel_again(harness: Harness) -> None:
    alice = client(harness)
    job_id = alice.enqueue({"workflow": WORKFLOW})
    drain_stage(Stage.INTAKE, harness.deps)
    assert alice.cancel(job_id).status is JobStatus.CANCELLED
    with pytest.raises(JobAlreadyEnded) as ended:
        alice.cancel(job_id)
    assert ended.value.view.status is JobStatus.CANCELLED


def test_from_settings_uses_the_configured_backend_and_key(harness: Harness) -> None:
    settings = harness.settings.model_copy(update={"api_key": SecretStr(harness.acme.api_key)})
    built = Client.from_settings(settings, user_id="alice")
    job_id = built.enqueue({"workflow": WORKFLOW})
    assert harness.deps.queue(Stage.INTAKE).len() == 1
    drain_stage(Stage.INTAKE, harness.deps)
    assert built.get(job_id).status is JobStatus.QUEUED
