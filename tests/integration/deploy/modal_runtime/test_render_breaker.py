"""The render circuit breaker (issue 9: "a broken image or ComfyUI becomes a GPU crash loop").

Repeated render start-up failures stop every wake-up of render (the sweep's too) for a
cool-down, with a clear log line and `render_circuit: "open"` in /health.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
from fastapi.testclient import TestClient

from app.api.ingress import create_app
from app.core.models import Stage
from app.deploy.modal import app as modal_app  # before install(): real Volume handles
from app.engine.maintenance import sweep
from tests.integration.deploy.modal_runtime.conftest import Deployment
from tests.modal_emulator import EmulatedFunction, ModalEmulator


@pytest.fixture
def render(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatedFunction]:
    """The app's own wake/startup wiring over the emulated deployment."""
    monkeypatch.setattr(modal_app, "container_deps", lambda comfy_url=None: deployment.deps)
    monkeypatch.setattr(modal_app, "wall_clock", deployment.emu.clock.now)
    monkeypatch.setattr(modal_app, "monotonic", deployment.emu.clock.now)
    monkeypatch.setattr(modal_app, "_circuit", {"checked_at": float("-inf"), "open": 0.0})
    deployment.deps.waker = modal_app.wake
    yield deployment.emu.function("Render.run", lambda: 0, max_containers=1)


def _failing_start() -> None:
    """The Render class's own `@modal.enter` start-up hook, with a ComfyUI that fails."""
    user_cls = modal_app.Render._get_user_cls()  # type: ignore[attr-defined]
    start_comfy = user_cls.__dict__["start_comfy"]._get_raw_f()
    with pytest.raises(RuntimeError):
        start_comfy(_BrokenRender())


class _BrokenComfy:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def start(self) -> None:
        raise RuntimeError("ComfyUI exited at start")


class _BrokenRender:
    comfy: object = None


def test_repeated_startup_failures_open_the_circuit_and_stop_waking_render(
    deployment: Deployment,
    render: EmulatedFunction,
    emu: ModalEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.deploy.modal import comfy_process

    monkeypatch.setattr(comfy_process, "ComfyProcess", _BrokenComfy)
    monkeypatch.setattr(comfy_process, "write_extra_model_paths", lambda path, text: path)
    deployment.deps.queue(Stage.RENDER).put("a job")
    with structlog.testing.capture_logs() as logs:
        for _ in range(deployment.deps.settings.modal_render_breaker_failures):
            _failing_start()
        emu.advance(modal_app.CIRCUIT_CHECK_EVERY_S)
        report = sweep(deployment.deps)
    assert report["render"] == 1
    assert len(render.calls) == 0  # neither the sweep nor a hand-off spawned a GPU container
    opened = [e for e in logs if e["event"] == "render_circuit_open"]
    assert opened and opened[0]["failures"] == 3 and opened[0]["until"] > emu.clock.now()
    with TestClient(create_app(deployment.deps)) as http:
        assert http.get("/health").json()["render_circuit"] == "open"

    emu.advance(deployment.deps.settings.modal_render_breaker_cooldown_s)
    sweep(deployment.deps)
    assert len(render.calls) == 1  # the cool-down is over: render is tried again
    with TestClient(create_app(deployment.deps)) as http:
        assert http.get("/health").json()["render_circuit"] == "closed"


def test_a_closed_circuit_wakes_render_as_before(
    deployment: Deployment, render: EmulatedFunction
) -> None:
    deployment.deps.queue(Stage.RENDER).put("a job")
    sweep(deployment.deps)
    assert len(render.calls) == 1
