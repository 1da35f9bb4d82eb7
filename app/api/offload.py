"""Where a route's blocking store work runs: inline, or on the thread pool.

FastAPI runs every sync dependency and route on its thread pool: four thread hand-offs
for one `GET /v1/jobs/{id}` (the deps, the API key, the user header, the route), the
largest cost of that route under load after HTTP itself (py-spy, issue 13). Local
backends answer a read in microseconds, so their work runs on the event loop; Modal's
dict calls are network round trips and stay on the pool, where they cannot stall it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from app.engine.deps import Deps

T = TypeVar("T")


async def store_work(deps: Deps, call: Callable[[], T], *, may_block: bool = False) -> T:
    """`call()`'s result: at once where store calls are local, else on the thread pool.

    `may_block`: the call may also wait on something other than the store (a request to
    ComfyUI), so it goes to the pool whatever the backend.
    """
    if not deps.jobs.concurrent and not may_block:
        return call()
    return await run_in_threadpool(call)
