"""Backpressure on the emulated Modal: a full queue answers 503 + Retry-After, never hangs,
and a refused request holds no slot (issue 9: "A full queue hangs the API")."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.ingress import create_app
from app.clients.queue_client import Client
from app.core.errors import Backpressure, QueueFull
from app.core.models import Stage
from app.store.claims import held_slots
from app.store.keys import SLOTS_DICT
from tests.integration.deploy.modal_runtime.conftest import Deployment, deployment_for
from tests.integration.ingress_harness import WORKFLOW
from tests.modal_emulator import MAX_PARTITION_ITEMS, ModalEmulator


def _fill(deployment: Deployment, stage: Stage, count: int = MAX_PARTITION_ITEMS) -> None:
    queue = deployment.deps.queue(stage)
    for start in range(0, count, 1000):
        queue.put_many([f"filler-{i}" for i in range(start, min(start + 1000, count))])


def _slots(deployment: Deployment) -> list[object]:
    """Slots held now (a released tenure has its `released:` mark)."""
    return [ref for ref, _holder in held_slots(deployment.deps.kv(SLOTS_DICT))]


def test_a_full_render_queue_answers_503_with_retry_after_and_holds_no_slot(
    deployment: Deployment,
) -> None:
    _fill(deployment, Stage.RENDER)
    with TestClient(create_app(deployment.deps)) as http:
        response = http.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=deployment.headers())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert response.json()["error"]["code"] == "overloaded"
    assert deployment.emu.ledger.hangs == []
    assert _slots(deployment) == []
    assert list(deployment.deps.jobs.active_ids()) == []


def test_the_backlog_setting_refuses_before_the_queue_is_full(
    emu: ModalEmulator, tmp_path: Path
) -> None:
    deployment = deployment_for(
        emu, tmp_path, max_render_backlog=10, backpressure_check_interval_s=0
    )
    _fill(deployment, Stage.RENDER, 11)
    with TestClient(create_app(deployment.deps)) as http:
        refused = http.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=deployment.headers())
        deployment.deps.queue(Stage.RENDER).get_many(5)
        admitted = http.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=deployment.headers())
    assert refused.status_code == 503
    assert admitted.status_code == 202


def test_a_put_that_fails_after_admission_fails_the_job_and_frees_its_slots(
    emu: ModalEmulator, tmp_path: Path
) -> None:
    # The check passes (high-water and backlog at the hard limit), then the put times out
    # (a job with no inputs is handed straight to render).
    deployment = deployment_for(
        emu,
        tmp_path,
        queue_high_water_items=MAX_PARTITION_ITEMS,
        max_render_backlog=MAX_PARTITION_ITEMS,
        backpressure_check_interval_s=0,
    )
    _fill(deployment, Stage.RENDER)
    with TestClient(create_app(deployment.deps)) as http:
        response = http.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=deployment.headers())
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert emu.ledger.hangs == []
    assert _slots(deployment) == []
    (failed,) = deployment.deps.jobs.list_for_user(deployment.tenant.tenant.id, "alice").jobs
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "overloaded"


def test_every_modal_put_has_a_timeout(deployment: Deployment) -> None:
    _fill(deployment, Stage.UPLOAD)
    with pytest.raises(QueueFull):
        deployment.deps.queue(Stage.UPLOAD).put("one more")
    with pytest.raises(QueueFull):
        deployment.deps.queue(Stage.UPLOAD).put_many(["one more"])
    assert deployment.emu.ledger.hangs == []


def test_the_python_client_refuses_the_same_way(deployment: Deployment) -> None:
    _fill(deployment, Stage.RENDER)
    client = Client(deployment.deps, deployment.tenant.api_key, "alice")
    with pytest.raises(Backpressure) as refused:
        client.enqueue({"workflow": WORKFLOW})
    assert refused.value.retry_after_s == 30
    assert deployment.deps.queue(Stage.INTAKE).len() == 0
