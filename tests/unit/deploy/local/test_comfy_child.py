"""The managed ComfyUI's watchdog decisions, with a stand-in child and an injected clock."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.deploy.local.comfy_child import STARTUP_ALLOWANCE_S, ManagedComfy
from tests.state_helpers import FakeClock

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


class Health:
    def __init__(self) -> None:
        self.up = True

    def __call__(self, url: str) -> bool:
        return self.up


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[ManagedComfy, Health, FakeClock]]:
    health, clock = Health(), FakeClock()
    comfy = ManagedComfy(
        SLEEPER,
        "http://127.0.0.1:1",
        tmp_path / "comfyui.restart",
        unhealthy_s=30,
        healthy=health,
        clock=clock,
    )
    comfy._spawn()  # the process alone; the test calls tick() instead of the thread
    try:
        yield comfy, health, clock
    finally:
        comfy.stop()


def pid(comfy: ManagedComfy) -> int:
    assert comfy.process is not None
    return comfy.process.pid


def test_a_render_workers_request_restarts_it(
    child: tuple[ManagedComfy, Health, FakeClock],
) -> None:
    comfy, _, _ = child
    before = pid(comfy)
    comfy.request_path.write_text("job j1: interrupt not honoured")
    reason = comfy.tick()
    assert reason is not None and "interrupt not honoured" in reason
    assert pid(comfy) != before and comfy.restarts == 1
    assert not comfy.request_path.exists()
    assert comfy.tick() is None  # answered: nothing more to do


def test_no_answer_for_the_bound_restarts_it_only_after_it_was_up(
    child: tuple[ManagedComfy, Health, FakeClock],
) -> None:
    comfy, health, clock = child
    assert comfy.tick() is None  # up
    health.up = False
    clock.advance(29)
    assert comfy.tick() is None  # within the bound
    clock.advance(1)
    reason = comfy.tick()
    assert reason is not None and "no health check for 30 s" in reason
    # Started again: not up yet, and a fresh start has its allowance before it counts.
    clock.advance(STARTUP_ALLOWANCE_S - 1)
    assert comfy.tick() is None
    clock.advance(1)
    assert comfy.tick() is not None


def test_a_child_that_exited_is_started_again(
    child: tuple[ManagedComfy, Health, FakeClock],
) -> None:
    comfy, _, _ = child
    assert comfy.process is not None
    comfy.process.kill()
    comfy.process.wait()
    reason = comfy.tick()
    assert reason is not None and "exited" in reason
    assert comfy.process is not None and comfy.process.poll() is None


def test_start_forgets_a_stale_request(tmp_path: Path) -> None:
    comfy = ManagedComfy(SLEEPER, "http://127.0.0.1:1", tmp_path / "r", unhealthy_s=30)
    comfy.request_path.write_text("old")
    comfy.start()
    try:
        assert not comfy.request_path.exists()
    finally:
        comfy.stop()
    assert comfy.process is None
