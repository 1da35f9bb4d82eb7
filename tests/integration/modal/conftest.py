"""The real Modal app on the emulator: a ComfyUI double, an input/webhook site on
127.0.0.1, the ingress under a TestClient, and the clock moved by hand (manual mode)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.models import JobStatus
from app.engine.deps import Deps
from tests.comfy_double import ComfyDouble
from tests.modal_emulator import ModalEmulator, SimClock
from tests.modal_emulator.app_harness import ModalApp, harness_settings
from tests.support.http_servers import Site, serve


@dataclass
class Faults:
    """Hooks the tests set; the harness wires them into every container's deps."""

    download: Callable[[], object] | None = None
    render: Callable[[], object] | None = None
    upload: Callable[[], object] | None = None
    calls: dict[str, int] = field(default_factory=dict)


@dataclass
class World:
    app: ModalApp
    emu: ModalEmulator
    client: TestClient
    site: Site
    api_key: str
    faults: Faults

    def headers(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "X-User-ID": user}

    def submit(self, body: dict[str, Any], user: str = "alice") -> httpx.Response:
        answer: httpx.Response = self.client.post("/v1/jobs", json=body, headers=self.headers(user))
        return answer

    def view(self, job_id: str, user: str = "alice") -> dict[str, Any]:
        answer: dict[str, Any] = self.client.get(
            f"/v1/jobs/{job_id}", headers=self.headers(user)
        ).json()
        return answer

    def cancel(self, job_id: str, user: str = "alice") -> httpx.Response:
        answer: httpx.Response = self.client.delete(
            f"/v1/jobs/{job_id}", headers=self.headers(user)
        )
        return answer

    @property
    def deps(self) -> Deps:
        return self.app.deps()

    def run(self) -> None:
        """Run every spawned input until nothing is left."""
        self.emu.run_until_idle()

    def status(self, job_id: str) -> JobStatus:
        return self.deps.jobs.get(job_id).status


def _wrap(
    target: Any, name: str, hook: Callable[[], Callable[[], object] | None], calls: dict[str, int]
) -> None:
    real = getattr(target, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[name] = calls.get(name, 0) + 1
        fault = hook()
        if fault is not None:
            fault()
        return real(*args, **kwargs)

    setattr(target, name, wrapped)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    double = ComfyDouble(tmp_path / "comfy")
    url = double.start()
    faults = Faults()

    def adopt(deps: Deps) -> None:
        _wrap(deps.http, "download", lambda: faults.download, faults.calls)
        _wrap(deps.comfy, "run", lambda: faults.render, faults.calls)

    try:
        with serve("127.0.0.1") as site:
            settings = harness_settings(
                tmp_path,
                fetch_allow_http=True,
                fetch_allow_cidrs=["127.0.0.1/32"],
                fetch_allowed_ports=[site.port],
                webhook_retry_schedule_s=[5, 5],
                webhook_timeout_s=5,
            )
            # Real time at the start: the ComfyUI client checks deadlines on the wall clock.
            emu = ModalEmulator(mode="manual", latency_s=0.0, clock=SimClock(time.time()))
            harness = ModalApp(emu, settings, comfy_url=url, adopt=adopt)
            with harness.installed():
                _wrap(harness.objects, "put_file", lambda: faults.upload, faults.calls)
                harness.publish_catalog(httpx.get(f"{url}/object_info").json())
                tenant = harness.deps().tenants.create("acme", max_active_jobs_per_user=5)
                with TestClient(harness.asgi()) as client:
                    yield World(harness, emu, client, site, tenant.api_key, faults)
            emu.close()
    finally:
        double.stop()
