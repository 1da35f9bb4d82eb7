"""The local backend refuses with the same 503 + Retry-After once render is backed up."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.api.ingress import create_app
from app.core.config import Settings
from app.core.models import Stage
from tests.integration.ingress_harness import WORKFLOW, make_harness


def test_the_render_backlog_setting_refuses_before_any_slot(tmp_path: Path) -> None:
    harness = make_harness(
        Settings(data_dir=tmp_path, max_render_backlog=2, backpressure_check_interval_s=0)
    )
    harness.deps.queue(Stage.RENDER).put_many(["a", "b", "c"])
    with TestClient(create_app(harness.deps)) as http:
        response = http.post(
            "/v1/jobs", json={"workflow": WORKFLOW}, headers=harness.headers(harness.acme, "alice")
        )
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "30"
        assert list(harness.deps.jobs.active_ids()) == []
        harness.deps.queue(Stage.RENDER).get_many(2)
        again = http.post(
            "/v1/jobs", json={"workflow": WORKFLOW}, headers=harness.headers(harness.acme, "alice")
        )
        assert again.status_code == 202
