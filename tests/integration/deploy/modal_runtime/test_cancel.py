"""Cancel never kills an unrelated job, and the Python client's cancel stops the render.

The emulator models modal 1.6.4's cancel: with one input per container the input gets
`InputCancellation`; with `max_inputs > 1` the whole container stops and the other
inputs are lost mid-message (`_container_entrypoint.py:204-217`, `:255-258`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.clients.queue_client import Client
from app.core.config import Settings
from app.engine.deps import build_deps
from app.engine.render_cancel import cancel_call, cancel_render
from app.store.backends.modal import ModalBackend
from tests.integration.deploy.modal_runtime.conftest import deployment_for
from tests.modal_emulator import EmulatedFunction, ModalEmulator
from tests.state_helpers import new_job
from tests.support.waiting import wait_until


@pytest.fixture
def threads() -> Iterator[ModalEmulator]:
    emulator = ModalEmulator(latency_s=0.0)
    with emulator.install():
        yield emulator
    emulator.close()


class Renders:
    """Render inputs that run until told to finish, checking for cancellation."""

    def __init__(self, emu: ModalEmulator, max_inputs: int, containers: int = 1) -> None:
        self.starts: Counter[int] = Counter()
        self.finish = {n: threading.Event() for n in range(4)}
        self.fn: EmulatedFunction = emu.function(
            "Render.run", self._body, max_containers=containers, max_inputs=max_inputs
        )

    def _body(self, n: int) -> int:
        self.starts[n] += 1
        while not self.finish[n].wait(0.005):
            ModalEmulator.checkpoint()  # where the emulator delivers a cancel
        return n

    def job(self, call: Any, n: int) -> Any:
        return SimpleNamespace(id=f"job{n}", render_call_id=call.object_id)


def test_with_several_inputs_per_container_cancel_leaves_the_sibling_alone(
    threads: ModalEmulator,
) -> None:
    renders = Renders(threads, max_inputs=2)
    mine, sibling = renders.fn.spawn(0), renders.fn.spawn(1)
    wait_until(lambda: renders.starts[0] and renders.starts[1], timeout_s=10)
    assert cancel_render(renders.job(mine, 0), max_inputs=2) is False  # cooperative only
    for event in renders.finish.values():
        event.set()
    threads.wait_idle()
    assert sibling.get() == 1
    assert renders.starts[1] == 1  # never restarted: not lost mid-message
    assert threads.failures == []


def test_the_sdk_cancel_it_avoids_would_have_restarted_the_sibling(
    threads: ModalEmulator,
) -> None:
    renders = Renders(threads, max_inputs=2)
    mine, _sibling = renders.fn.spawn(0), renders.fn.spawn(1)
    wait_until(lambda: renders.starts[0] and renders.starts[1], timeout_s=10)
    assert cancel_call(mine.object_id) is True
    wait_until(lambda: renders.starts[1] == 2, timeout_s=10)  # lost, run again elsewhere
    for event in renders.finish.values():
        event.set()
    threads.wait_idle()


def test_with_one_input_per_container_cancel_stops_only_that_render(
    threads: ModalEmulator,
) -> None:
    renders = Renders(threads, max_inputs=1, containers=2)
    mine, other = renders.fn.spawn(0), renders.fn.spawn(1)
    wait_until(lambda: renders.starts[0] and renders.starts[1], timeout_s=10)
    assert cancel_render(renders.job(mine, 0), max_inputs=1) is True
    wait_until(lambda: mine.status == "cancelled", timeout_s=10)
    renders.finish[1].set()
    threads.wait_idle()
    assert other.get() == 1
    assert renders.starts == Counter({0: 1, 1: 1})


def test_the_python_client_cancel_stops_the_render_like_the_ingress(
    threads: ModalEmulator, tmp_path: Path
) -> None:
    renders = Renders(threads, max_inputs=1)
    call = renders.fn.spawn(0)
    wait_until(lambda: renders.starts[0] == 1, timeout_s=10)
    deployment = deployment_for(threads, tmp_path)
    tenant = deployment.tenant
    settings = Settings(backend="modal", data_dir=tmp_path)
    deps = build_deps(settings, backend=ModalBackend(settings.modal_app_name, "test"))
    deps.clock = threads.clock.now
    admitted = deps.jobs.create(
        new_job(tenant.tenant.id, "alice"), "job_" + "a" * 32, tenant.tenant.limits(settings)
    )
    deps.jobs.save(admitted.job.model_copy(update={"render_call_id": call.object_id}))
    Client(deps, tenant.api_key, "alice").cancel(admitted.job.id)
    wait_until(lambda: call.status == "cancelled", timeout_s=10)
    threads.wait_idle()
