"""Intake-queue messages choose no job ids: reused, path-like or malformed ids are refused."""

from __future__ import annotations

import json

import pytest

from app.clients.queue_client import Client
from app.core.errors import UnknownJob as JobNotFound
from app.core.models import JobStatus, Stage
from app.stages import drain as drain_stage
from tests.integration.ingress_harness import WORKFLOW, Harness, make_harness
from tests.support.settings import SettingsFactory


@pytest.fixture
def harness(settings_factory: SettingsFactory) -> Harness:
    return make_harness(settings_factory(public_url="http://testserver"))


def put(harness: Harness, job_id: str, api_key: str, user: str = "bob") -> None:
    message = {
        "job_id": job_id,
        "api_key": api_key,
        "user_id": user,
        "request": {"workflow": WORKFLOW},
    }
    harness.deps.queue(Stage.INTAKE).put(json.dumps(message))


def test_reusing_another_tenants_job_id_gets_nothing(harness: Harness) -> None:
    alice = Client(harness.deps, harness.acme.api_key, "alice")
    job_id = alice.enqueue({"workflow": WORKFLOW, "metadata": {"owner": "alice"}})
    drain_stage(Stage.INTAKE, harness.deps)
    before = alice.get(job_id)

    put(harness, job_id, harness.beta.api_key)
    put(harness, job_id, harness.acme.api_key, user="alice")  # even the same user
    drain_stage(Stage.INTAKE, harness.deps)

    after = alice.get(job_id)
    assert after.status is before.status is JobStatus.QUEUED
    assert after.metadata == {"owner": "alice"} and after.created_at == before.created_at
    with pytest.raises(JobNotFound):
        Client(harness.deps, harness.beta.api_key, "bob").get(job_id)
    assert harness.deps.queue(Stage.RENDER).len() == 1  # no inputs: straight to render


@pytest.mark.parametrize(
    "job_id",
    ["../../dir", "/tmp/elsewhere", "job_" + "a" * 32 + "\n", "job_1", "JOB_" + "A" * 32, "x"],
)
def test_path_like_or_malformed_ids_are_refused(harness: Harness, job_id: str) -> None:
    put(harness, job_id, harness.beta.api_key)
    drain_stage(Stage.INTAKE, harness.deps)

    assert harness.deps.jobs.find(job_id) is None
    assert harness.deps.queue(Stage.FETCH).len() == harness.deps.queue(Stage.RENDER).len() == 0
    assert not harness.settings.work_dir.exists() or not any(harness.settings.work_dir.iterdir())


def test_a_reused_id_that_slips_past_the_check_is_refused_by_create(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two messages racing with one id both pass the guard's look-up; only one creates."""
    alice = Client(harness.deps, harness.acme.api_key, "alice")
    job_id = alice.enqueue({"workflow": WORKFLOW, "metadata": {"owner": "alice"}})
    drain_stage(Stage.INTAKE, harness.deps)
    before = alice.get(job_id)
    monkeypatch.setattr(harness.deps.jobs, "find", lambda _job_id: None)  # the race window

    put(harness, job_id, harness.beta.api_key)
    drain_stage(Stage.INTAKE, harness.deps)
    monkeypatch.undo()

    after = alice.get(job_id)
    assert after.metadata == {"owner": "alice"} and after.created_at == before.created_at
    assert harness.deps.jobs.get(job_id).user_id == "alice"
    assert queued(harness) == 1


def queued(harness: Harness) -> int:
    """Admitted jobs waiting for their first stage (render when a job has no inputs)."""
    return harness.deps.queue(Stage.FETCH).len() + harness.deps.queue(Stage.RENDER).len()
