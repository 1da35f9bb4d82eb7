"""Backpressure: refuse new work while the pipeline's queues are near their limits.

A Modal queue partition holds 5,000 items, and a put on a full one would block (ours
time out with `QueueFull`). Admission checks the queues it feeds *before* anything is
written (no idempotency record, no slot), so a refusal costs the caller a retry and
the service nothing: `POST /v1/jobs` answers 503 with `Retry-After`, the Python client
raises `Backpressure`. The same check runs on every backend (the local one has no
hard limit, but the backlog setting still bounds how long a job may wait).
"""

from __future__ import annotations

from collections.abc import Iterable

from app.core.errors import Backpressure
from app.core.logs import get_logger
from app.core.models import Stage
from app.engine.deps import Deps

#: The queues `POST /v1/jobs` feeds: fetch directly, render right after (it fills first).
HTTP_ADMISSION_QUEUES = (Stage.FETCH, Stage.RENDER)
#: The Python client puts on intake, which then feeds the same two.
CLIENT_ADMISSION_QUEUES = (Stage.INTAKE, *HTTP_ADMISSION_QUEUES)


def check_backlog(deps: Deps, stages: Iterable[Stage] = HTTP_ADMISSION_QUEUES) -> None:
    """Raise `Backpressure` if a queue is over its high-water mark or render is backed up.

    At most one `len` round trip per queue named every `backpressure_check_interval_s`
    (per process or container); nothing is written.
    """
    settings = deps.settings
    for stage in stages:
        length = _queue_length(deps, stage)
        limit = settings.max_render_backlog if stage is Stage.RENDER else 0
        if limit and length > limit:
            _refuse(deps, stage, length, limit, "the render backlog")
        if length > settings.queue_high_water_items:
            _refuse(deps, stage, length, settings.queue_high_water_items, f"the {stage} queue")


def _queue_length(deps: Deps, stage: Stage) -> int:
    """The queue's length, read again only when the last reading is older than the interval.

    A length is a round trip on Modal, and it moves slowly next to a burst of POSTs: a
    reading a second or two old lets at most that much more work in past the high-water
    mark, which sits a thousand items under the partition's hard limit, and a put that
    still finds the queue full times out into a clean failure, never a hang.
    """
    now = deps.clock()
    seen = deps.backlog_seen.get(stage)
    if seen is not None and now - seen[0] < deps.settings.backpressure_check_interval_s:
        return seen[1]
    length = deps.queue(stage).len()
    deps.backlog_seen[stage] = (now, length)
    return length


def _refuse(deps: Deps, stage: Stage, length: int, limit: int, what: str) -> None:
    retry_after = deps.settings.backpressure_retry_after_s
    get_logger(stage=stage.value).warning(
        "admission_backpressure", queued=length, limit=limit, retry_after_s=retry_after
    )
    raise Backpressure(
        f"the service is at capacity ({what} holds {length} jobs, limit {limit}); "
        f"retry after {retry_after} s",
        retry_after_s=retry_after,
    )
