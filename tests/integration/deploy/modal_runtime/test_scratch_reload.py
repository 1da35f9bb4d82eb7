"""No scratch reload under open files (issue 9: "Uploads fail under bursts").

Eight upload inputs run as threads in one emulated container (`max_inputs=8`); each one
reloads the scratch volume at job start, as the upload stage does, then holds an output
open (its S3 PUT). The emulator's `reload()` raises while any file of the volume is
open in that container (modal 1.6.4 `volume.py:503`, `volume.py:917-935`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext

import pytest

from app.deploy.modal import app as modal_app  # before install(): real Volume handles
from app.deploy.modal.scratch_gate import ScratchGate
from tests.modal_emulator import EmulatedFunction, ModalEmulator
from tests.modal_emulator.context import current_input
from tests.support.waiting import wait_until

INPUTS = 8


@pytest.fixture
def threads() -> Iterator[ModalEmulator]:
    emulator = ModalEmulator(latency_s=0.0)
    with emulator.install():
        yield emulator
    emulator.close()


def _deploy(
    emu: ModalEmulator,
    reload: Callable[[], None],
    guard: Callable[[], AbstractContextManager[object]],
    release: threading.Event,
    holding: threading.Event,
) -> EmulatedFunction:
    def upload(n: int) -> None:
        with guard():  # what drain_stage does around each message
            reload()  # upload.run: deps.scratch_reload() at job start
            ctx = current_input()
            assert ctx is not None
            path = ctx.container.path(f"{modal_app.SCRATCH_DIR}/work/job{n}/out.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as out:  # held open, as for the S3 PUT
                out.write(b"png")
                holding.set()
                assert release.wait(10)

    return emu.function(
        "upload",
        upload,
        max_containers=1,
        max_inputs=INPUTS,
        volumes={modal_app.SCRATCH_DIR: modal_app.scratch_volume},
    )


def test_eight_uploads_in_one_container_with_files_open_all_succeed(
    threads: ModalEmulator,
) -> None:
    gate = ScratchGate(wait_s=10)
    release, holding = threading.Event(), threading.Event()
    fn = _deploy(
        threads,
        gate.exclusive(modal_app.scratch_volume.reload, "reload"),
        gate.holding,
        release,
        holding,
    )
    fn.spawn(0)
    assert holding.wait(10)
    for n in range(1, INPUTS):
        fn.spawn(n)
    wait_until(lambda: gate.writers_waiting > 0, timeout_s=10)  # a reload met an open file
    release.set()
    threads.wait_idle()
    assert threads.failures == []
    assert fn.containers_started == 1


def test_without_the_gate_a_sibling_reload_fails(threads: ModalEmulator) -> None:
    release, holding = threading.Event(), threading.Event()
    fn = _deploy(threads, modal_app.scratch_volume.reload, nullcontext, release, holding)
    fn.spawn(0)
    assert holding.wait(10)
    fn.spawn(1)
    wait_until(lambda: bool(threads.failures), timeout_s=10)
    release.set()
    threads.wait_idle()
    (_call, error), *_ = threads.failures
    assert "open files" in str(error)
