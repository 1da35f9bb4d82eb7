"""The scratch gate's bound: a reload still blocked by open files becomes a transient error."""

from __future__ import annotations

import pytest

from app.core.errors import StorageUnavailable
from app.deploy.modal.scratch_gate import ScratchGate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0  # every reading moves on: the bound is reached without waiting
        return self.now


def test_open_files_outside_any_message_end_as_storage_unavailable() -> None:
    tries: list[int] = []

    def reload() -> None:
        tries.append(1)
        raise RuntimeError("there are open files preventing the operation: path x is open")

    gate = ScratchGate(wait_s=3, clock=Clock())
    with pytest.raises(StorageUnavailable), gate.holding():
        gate.exclusive(reload, "reload")()
    assert len(tries) >= 1


def test_other_errors_pass_through_and_success_returns() -> None:
    gate = ScratchGate(wait_s=3, clock=Clock())
    done: list[int] = []
    with gate.holding():
        gate.exclusive(lambda: done.append(1), "commit")()  # its own hold does not block it
    assert done == [1]

    def broken() -> None:
        raise RuntimeError("volume not mounted")

    with pytest.raises(StorageUnavailable):
        gate.exclusive(broken, "reload")()
