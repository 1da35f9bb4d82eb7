"""The one cheap "was this job cancelled?" question every stage asks while it works."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.engine.deps import Deps

#: How often a stage's loop asks the store whether the job was cancelled.
CANCEL_CHECK_INTERVAL_S = 0.5


def cancel_checker(deps: Deps, job_id: str) -> Callable[[], bool]:
    """A `should_cancel`: reads the terminal record at most every half second.

    Any terminal decision counts: a job that ended (cancelled, or failed by fail_stale)
    has nothing left to work for.
    """
    state = {"at": float("-inf"), "cancelled": False}

    def should_cancel() -> bool:
        now = time.monotonic()
        if not state["cancelled"] and now - state["at"] >= CANCEL_CHECK_INTERVAL_S:
            state["at"] = now
            state["cancelled"] = deps.jobs.terminal(job_id) is not None
        return bool(state["cancelled"])

    return should_cancel
