"""The one wait loop, on a hand-moved clock: no real sleeping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.core.polling import poll_until


class Clock:
    """A monotonic clock that moves only when the loop sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def answers(*values: str | None) -> Iterator[str | None]:
    yield from values


def test_returns_the_first_done_value_sleeping_poll_s_between_calls() -> None:
    clock = Clock()
    seen = answers("queued", "running", "completed", "never read")
    result = poll_until(
        lambda: next(seen),
        lambda v: v == "completed",
        timeout_s=60,
        poll_s=2,
        on_timeout=lambda last: "timeout",
        clock=clock,
        sleep=clock.sleep,
    )
    assert result == "completed"
    assert clock.slept == [2, 2]


def test_past_the_deadline_hands_the_last_value_seen_to_on_timeout() -> None:
    clock = Clock()
    seen = answers(None, "running", None, None, None)  # None: nothing to see (yet / again)
    result = poll_until(
        lambda: next(seen),
        lambda v: v == "completed",
        timeout_s=5,
        poll_s=2,
        on_timeout=lambda last: f"gave up at {last}",
        clock=clock,
        sleep=clock.sleep,
    )
    assert result == "gave up at running"
    assert clock.slept == [2, 2, 1]  # never sleeps past the deadline
    assert sum(clock.slept) == 5


def test_on_timeout_may_raise_and_fetch_runs_at_least_once() -> None:
    clock = Clock()
    calls: list[int] = []

    def fetch() -> str:
        calls.append(1)
        return "running"

    def timed_out(last: str | None) -> str:
        raise TimeoutError(last)

    with pytest.raises(TimeoutError, match="running"):
        poll_until(
            fetch,
            lambda v: False,
            timeout_s=0,
            poll_s=1,
            on_timeout=timed_out,
            clock=clock,
            sleep=clock.sleep,
        )
    assert calls == [1] and clock.slept == []
