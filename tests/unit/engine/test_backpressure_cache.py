"""The backpressure check reuses a queue-length reading for a short interval (a round trip
on Modal each), and reads again once it is older."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.core.errors import Backpressure
from app.core.models import Stage
from app.engine.backpressure import check_backlog
from app.engine.deps import Deps
from app.store.backends.memory import MemoryBackend


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class CountingLen:
    """Wraps a queue and counts its `len` calls."""

    def __init__(self, deps: Deps, stage: Stage) -> None:
        self.queue = deps.queue(stage)
        self.calls = 0
        real = self.queue.len

        def counted() -> int:
            self.calls += 1
            return real()

        self.queue.len = counted  # type: ignore[method-assign]


def make(tmp_path: object, interval_s: float) -> tuple[Deps, Clock]:
    clock = Clock()
    settings = Settings(
        data_dir=tmp_path,
        max_render_backlog=2,
        backpressure_check_interval_s=interval_s,
    )
    return Deps(settings=settings, backend=MemoryBackend(), clock=clock), clock


def test_a_reading_is_reused_within_the_interval_then_read_again(tmp_path: object) -> None:
    deps, clock = make(tmp_path, interval_s=2.0)
    render = CountingLen(deps, Stage.RENDER)
    check_backlog(deps, [Stage.RENDER])
    check_backlog(deps, [Stage.RENDER])
    assert render.calls == 1  # the second admission reused the reading
    for n in range(3):
        deps.queue(Stage.RENDER).put(f"m{n}")
    check_backlog(deps, [Stage.RENDER])  # still the old reading: admitted
    clock.now += 2.0
    with pytest.raises(Backpressure):
        check_backlog(deps, [Stage.RENDER])  # read again: over the backlog
    assert render.calls == 2


def test_an_interval_of_zero_reads_every_time(tmp_path: object) -> None:
    deps, _ = make(tmp_path, interval_s=0.0)
    render = CountingLen(deps, Stage.RENDER)
    for _ in range(3):
        check_backlog(deps, [Stage.RENDER])
    assert render.calls == 3
