"""Independent store calls run at once where each call is a network round trip.

On Modal every dict or queue operation is an RPC of a few dozen ms, and calls that do not
depend on each other (two reads, writes to different keys) need not wait for each other:
a backend that says so (`concurrent_calls = True`) gets them on a shared thread pool,
so only the longest of them counts on the critical path. Local backends answer in
microseconds and keep their calls in order, which keeps their tests deterministic.

Never nest these calls (a pooled call that gathers again could wait on a full pool).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

A = TypeVar("A")
B = TypeVar("B")

#: Enough for the widest fan-out (admission's first group) times a few requests at once.
_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="store-rpc")


def is_concurrent(backend: object) -> bool:
    """Whether `backend`'s calls are round trips worth overlapping."""
    return bool(getattr(backend, "concurrent_calls", False))


def _submit(call: Callable[[], A]) -> Future[A]:
    # The caller's context goes along (the Modal emulator finds the current input there).
    return _POOL.submit(contextvars.copy_context().run, call)


def run_calls(concurrent: bool, *calls: Callable[[], object]) -> list[object]:
    """Run every call (at once if `concurrent`); results in order; the first error raises
    after all have finished, so no call is left running behind the caller."""
    if not concurrent or len(calls) < 2:
        return [call() for call in calls]
    futures = [_submit(call) for call in calls]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


def both(concurrent: bool, first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """Two calls' results (at once if `concurrent`)."""
    a, b = run_calls(concurrent, first, second)
    return a, b  # type: ignore[return-value]


def in_background(concurrent: bool, call: Callable[[], object]) -> Callable[[], None]:
    """Start `call` (on the pool if `concurrent`, else now) and return the wait for it,
    which raises what the call raised."""
    if not concurrent:
        call()
        return _done
    future = _submit(call)

    def wait() -> None:
        future.result()

    return wait


def _done() -> None:
    """Nothing left to wait for."""
