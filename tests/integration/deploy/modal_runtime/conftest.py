"""An emulated Modal deployment for the runtime-fix tests: the production Modal backend over
`tests.modal_emulator` (manual mode, instant timeouts), one tenant, a published catalog."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.adapters.comfy import catalog as node_catalog
from app.core.config import Settings
from app.engine.deps import Deps
from app.store.backends.modal import ModalBackend
from app.store.tenants import NewTenant
from tests.integration.ingress_harness import OBJECT_INFO
from tests.modal_emulator import ModalEmulator, SimClock


@dataclass
class Deployment:
    emu: ModalEmulator
    deps: Deps
    tenant: NewTenant

    def headers(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tenant.api_key}", "X-User-ID": user}


def make_deps(emu: ModalEmulator, settings: Settings) -> Deps:
    backend = ModalBackend(
        settings.modal_app_name, "test", put_timeout_s=settings.queue_put_timeout_s
    )
    return Deps(settings=settings, backend=backend, clock=emu.clock.now)


@pytest.fixture
def emu() -> Iterator[ModalEmulator]:
    emulator = ModalEmulator(mode="manual", clock=SimClock(real_wait_scale=0.0), latency_s=0.0)
    with emulator.install():
        yield emulator
    emulator.close()


def deployment_for(emu: ModalEmulator, tmp_path: Path, **overrides: Any) -> Deployment:
    settings = Settings(backend="modal", data_dir=tmp_path, **overrides)
    deps = make_deps(emu, settings)
    node_catalog.publish(deps.kv(node_catalog.CATALOG_DICT), OBJECT_INFO, emu.clock.now())
    return Deployment(emu=emu, deps=deps, tenant=deps.tenants.create("acme"))


@pytest.fixture
def deployment(emu: ModalEmulator, tmp_path: Path) -> Deployment:
    return deployment_for(emu, tmp_path)
