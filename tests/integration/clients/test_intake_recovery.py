"""A queued request lost with an intake worker is re-admitted from its marker."""

from __future__ import annotations

import pytest

from app.clients.queue_client import Client
from app.core.errors import UnknownJob
from app.core.ids import new_job_id
from app.core.models import JobStatus, Stage
from app.core.schemas import IntakeMessage, JobRequest
from app.engine.maintenance import INTAKE_MAX_RESENDS, INTAKE_RECOVER_AFTER_S, fail_stale
from app.engine.pipeline import process_intake_message
from app.stages import drain as drain_stage
from app.stages.intake import run as intake_run
from tests.integration.ingress_harness import WORKFLOW, Harness, make_harness
from tests.support.settings import SettingsFactory


@pytest.fixture
def harness(settings_factory: SettingsFactory) -> Harness:
    return make_harness(settings_factory(public_url="http://testserver"), acme_cap=2)


def _lose_message(harness: Harness) -> str:
    """An intake worker takes the message and is killed before it writes anything."""
    raw = harness.deps.queue(Stage.INTAKE).get()
    assert raw is not None
    return raw


def test_a_request_lost_with_the_intake_worker_is_readmitted(harness: Harness) -> None:
    alice = Client(harness.deps, harness.acme.api_key, "alice")
    job_id = alice.enqueue({"workflow": WORKFLOW, "metadata": {"n": 7}})
    lost = _lose_message(harness)
    assert harness.deps.intakes.get(job_id) is not None  # durable before the put
    assert fail_stale(harness.deps)["intakes_recovered"] == 0  # not overdue yet
    harness.clock.advance(INTAKE_RECOVER_AFTER_S + 1)
    assert fail_stale(harness.deps)["intakes_recovered"] == 1
    assert drain_stage(Stage.INTAKE, harness.deps) == 1
    view = alice.get(job_id)
    assert view.status is JobStatus.QUEUED and view.metadata == {"n": 7}
    assert harness.deps.intakes.get(job_id) is None
    # The original message turning up after all is harmless: no second job, no slot.
    process_intake_message(lost, harness.deps, intake_run)
    harness.clock.advance(INTAKE_RECOVER_AFTER_S + 1)
    assert fail_stale(harness.deps)["intakes_recovered"] == 0
    assert harness.deps.queue(Stage.RENDER).len() == 1  # no inputs: no fetch hop
    alice.enqueue({"workflow": WORKFLOW})
    drain_stage(Stage.INTAKE, harness.deps)  # cap 2: one slot was taken, one is free
    assert harness.deps.queue(Stage.RENDER).len() == 2


def test_a_request_that_keeps_getting_lost_is_recorded_as_failed(harness: Harness) -> None:
    alice = Client(harness.deps, harness.acme.api_key, "alice")
    job_id = alice.enqueue({"workflow": WORKFLOW})
    for _ in range(INTAKE_MAX_RESENDS):
        _lose_message(harness)
        harness.clock.advance(INTAKE_RECOVER_AFTER_S + 1)
        assert fail_stale(harness.deps)["intakes_recovered"] == 1
    _lose_message(harness)
    harness.clock.advance(INTAKE_RECOVER_AFTER_S + 1)
    assert fail_stale(harness.deps)["intakes_failed"] == 1
    view = alice.get(job_id)
    assert view.status is JobStatus.FAILED
    assert view.error is not None and view.error.code == "intake_lost"


def test_a_keyless_message_without_a_marker_is_not_admitted(harness: Harness) -> None:
    forged = IntakeMessage(
        job_id=new_job_id(),
        api_key="",
        user_id="alice",
        request=JobRequest.model_validate({"workflow": WORKFLOW}),
    )
    process_intake_message(forged.model_dump_json(), harness.deps, intake_run)
    with pytest.raises(UnknownJob):
        Client(harness.deps, harness.acme.api_key, "alice").get(forged.job_id)
