"""The tests' one wait loop: poll a condition until it holds or a deadline passes.

For waiting on something outside the test's control (a server coming up, a worker in
another process or thread reaching a state). Unit tests drive time with fake clocks and
events instead; this is for integration tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline (a test failure, not an error)."""


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `condition` every `interval_s` until it returns something truthy; return that.

    Raises `WaitTimeout` naming `what` once `timeout_s` seconds pass without it. Exceptions
    from `condition` propagate (an assertion inside it fails the wait at once).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value  # truthy, so not None
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what}: not met within {timeout_s:g} s")
        time.sleep(interval_s)
