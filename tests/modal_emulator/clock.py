"""The injectable clock: simulated wall time that only moves when told to.

Modal's limits that depend on time (Dict entries expire 7 days after last use, queue
partitions 24 h after the last put, schedules) are all read from this clock, so a test can
jump a week ahead in microseconds. Blocking waits (a `get` with a timeout) wait in *real*
time, scaled by `real_wait_scale` (1.0 by default so blocking behaviour matches real
threads; 0 makes every timeout instant), and move the simulated clock to the deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: 2026-01-01T00:00:00Z: a fixed, readable epoch for simulated time.
DEFAULT_EPOCH = 1_767_225_600.0

#: How often a blocked emulated call wakes up to check for cancellation (real seconds).
POLL_S = 0.005


class SimClock:
    """Simulated epoch seconds, thread-safe and monotonic."""

    def __init__(self, start: float = DEFAULT_EPOCH, *, real_wait_scale: float = 1.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.real_wait_scale = real_wait_scale

    def now(self) -> float:
        """Simulated `time.time()`."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds`; returns the new time."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._now += seconds
            return self._now

    def advance_to(self, when: float) -> float:
        """Move time forward to `when` (no-op if already past it)."""
        with self._lock:
            self._now = max(self._now, when)
            return self._now

    def sleep(self, seconds: float) -> None:
        """Simulated sleep: moves the clock, returns at once."""
        self.advance(max(0.0, seconds))

    def wait_until(
        self,
        cond: threading.Condition,
        ready: Callable[[], bool],
        timeout: float | None,
        *,
        check: Callable[[], None],
        real_bound: float | None = None,
    ) -> bool:
        """Wait on `cond` (held by the caller) until `ready()`; False on timeout.

        `timeout` is simulated seconds (None: no timeout); the real wait is
        `timeout * real_wait_scale`, capped by `real_bound` real seconds when given.
        `check()` runs every few ms so a cancelled input stops waiting.
        """
        start_sim = self.now()
        real_budget: float | None = None if timeout is None else timeout * self.real_wait_scale
        if real_bound is not None:
            real_budget = real_bound if real_budget is None else min(real_budget, real_bound)
        deadline = None if real_budget is None else time.monotonic() + real_budget
        while not ready():
            check()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if timeout is not None:
                    self.advance_to(start_sim + timeout)
                return False
            cond.wait(POLL_S if remaining is None else min(POLL_S, remaining))
        return True
