"""Fixtures: one emulator per test, installed over the SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.modal_emulator import ModalEmulator


@pytest.fixture
def emu() -> Iterator[ModalEmulator]:
    """A threads-mode emulator, installed; instant timeouts are opt-in per test."""
    emulator = ModalEmulator()
    with emulator.install():
        yield emulator
    emulator.close()


@pytest.fixture
def manual() -> Iterator[ModalEmulator]:
    """A deterministic emulator: spawned inputs run only when stepped."""
    emulator = ModalEmulator(mode="manual")
    with emulator.install():
        yield emulator
    emulator.close()
