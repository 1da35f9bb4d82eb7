"""Dead webhook deliveries: listed for their tenant, re-sent with the same webhook-id."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.adapters.webhooks.delivery import PostResponse
from app.api.ingress import create_app
from app.core.config import Settings
from app.core.models import JobStatus, Stage
from app.engine.pipeline import after_terminal, release_due
from app.store.jobs import Limits
from tests.state_helpers import new_job
from tests.unit.stages.fakes import World, make_world
from tests.unit.stages.helpers import HOOK_URL


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, webhook_retry_schedule_s=[5], webhook_timeout_s=3)


def test_the_default_schedule_is_the_standard_webhooks_one() -> None:
    # immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
    assert Settings().webhook_retry_schedule_s == [5, 300, 1800, 7200, 18000, 36000, 36000]


def _dead_delivery(world: World) -> tuple[str, str]:
    """A job whose two attempts failed: its delivery is dead. Returns (api key, job id)."""
    created = world.deps.tenants.create("acme")
    world.deps.jobs.create(new_job(tenant=created.tenant.id, webhook_url=HOOK_URL), "j1", Limits())
    world.deps.jobs.finish("j1", JobStatus.FAILED)
    after_terminal(world.deps, world.job("j1"))
    world.http.answers = [PostResponse(500), PostResponse(500)]
    world.step(Stage.NOTIFY)
    world.clock.advance(10)
    release_due(world.deps)
    world.step(Stage.NOTIFY)
    delivery = world.deps.deliveries.get("j1")
    assert delivery is not None and delivery.state == "dead"
    return created.api_key, "j1"


def test_a_tenant_lists_its_failed_deliveries_and_resends_one(world: World) -> None:
    api_key, job_id = _dead_delivery(world)
    other = world.deps.tenants.create("beta").api_key
    http = TestClient(create_app(world.deps))
    auth = {"Authorization": f"Bearer {api_key}"}

    listed = http.get("/v1/webhooks/failed", headers=auth)
    assert listed.status_code == 200
    [failed] = listed.json()["deliveries"]
    first_id = world.http.posts[0].headers["webhook-id"]
    assert (failed["job_id"], failed["webhook_id"]) == (job_id, first_id)
    assert [a["outcome"] for a in failed["webhook"]["attempts"]] == ["retry", "dead"]
    others = http.get("/v1/webhooks/failed", headers={"Authorization": f"Bearer {other}"})
    assert others.json()["deliveries"] == []
    assert (
        http.post(
            f"/v1/jobs/{job_id}/webhook/resend", headers={"Authorization": f"Bearer {other}"}
        ).status_code
        == 404
    )

    resent = http.post(f"/v1/jobs/{job_id}/webhook/resend", headers=auth)
    assert resent.status_code == 202 and resent.json()["state"] == "pending"
    world.http.answers = [PostResponse(204)]
    assert world.step(Stage.NOTIFY) == 1
    assert world.http.posts[-1].headers["webhook-id"] == first_id  # at least once, same id
    delivery = world.deps.deliveries.get(job_id)
    assert delivery is not None and delivery.state == "delivered"
    assert [a.outcome for a in delivery.attempts] == ["retry", "dead", "delivered"]
    assert http.get("/v1/webhooks/failed", headers=auth).json()["deliveries"] == []
    again = http.post(f"/v1/jobs/{job_id}/webhook/resend", headers=auth)
    assert again.status_code == 409 and again.json()["error"]["code"] == "webhook_not_failed"
