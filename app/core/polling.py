"""The one "wait until it is done" loop, shared by the queue client, the HTTP client (and so
the command line) and the smoke check. The clock and the sleep are parameters, so tests
move time by hand instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from app.core.models import TERMINAL_STATUSES
from app.core.schemas import JobView

T = TypeVar("T")


def poll_until(
    fetch: Callable[[], T | None],
    done: Callable[[T], bool],
    *,
    timeout_s: float,
    poll_s: float,
    on_timeout: Callable[[T | None], T],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fetch` until `done(value)`; past `timeout_s`, return `on_timeout(last value)`.

    `fetch` returns None for "nothing to see yet" (a job intake has not admitted); the last
    value seen is kept across such answers. `fetch` runs at least once, then every `poll_s`,
    and the loop never sleeps past the deadline. `on_timeout` may raise instead of returning.
    """
    deadline = clock() + timeout_s
    last: T | None = None
    while True:
        value = fetch()
        if value is not None:
            last = value
            if done(value):
                return value
        remaining = deadline - clock()
        if remaining <= 0:
            return on_timeout(last)
        sleep(min(poll_s, remaining))


def poll_until_ended(
    fetch: Callable[[], JobView | None],
    *,
    timeout_s: float,
    poll_s: float,
    on_timeout: Callable[[JobView | None], JobView],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobView:
    """`poll_until` a job view reaches a terminal status (both clients' `wait`)."""
    return poll_until(
        fetch,
        lambda view: view.status in TERMINAL_STATUSES,
        timeout_s=timeout_s,
        poll_s=poll_s,
        on_timeout=on_timeout,
        clock=clock,
        sleep=sleep,
    )
