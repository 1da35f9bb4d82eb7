"""`GET /v1/jobs/{id}/events`: the job's events as Server-Sent Events (docs/events.md).

The stream reads the job's record every `events_poll_interval_s` (one store read, on
either backend) and sends what is new since the last event id the client saw
(`Last-Event-ID`, or `?last_event_id=` for clients that cannot set headers). It ends
after the terminal event. Each open stream holds one of the tenant's
`events_max_streams_per_tenant` places (`app.store.streams`, counted in the store, so
the bound holds across ingress processes); beyond them the answer is 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.http_errors import error_doc
from app.api.ingress import DepsDep, TenantDep, UserDep
from app.core.errors import ApiError
from app.core.models import Job, JobEvent
from app.engine.deps import Deps
from app.engine.events import is_terminal_event, stream_of
from app.engine.views import owned_job, sign_output
from app.store.keys import STREAMS_DICT
from app.store.streams import StreamLease, acquire

events_router = APIRouter()

#: A comment line this often keeps proxies from closing a quiet stream.
KEEPALIVE_S = 15.0
#: What an EventSource waits before reconnecting (the `retry:` field), in ms.
RECONNECT_MS = 2000


def sse(event: JobEvent) -> str:
    """One event in the text/event-stream format."""
    payload = json.dumps({"id": event.id, "type": event.type, "at": event.at, **event.data})
    return f"id: {event.id}\nevent: {event.type}\ndata: {payload}\n\n"


def _last_seen(header: str | None, query: int | None) -> int:
    raw = header if header is not None else query
    if raw is None:
        return 0
    try:
        seen = int(raw)
    except ValueError:
        seen = -1
    if seen < 0:
        raise ApiError(400, "invalid_request", "Last-Event-ID must be an event id (0 or more)")
    return seen


@events_router.get(
    "/v1/jobs/{job_id}/events",
    tags=["jobs"],
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The job's events."},
        400: error_doc("Last-Event-ID is not an event id."),
        401: error_doc("Missing, invalid or revoked API key."),
        404: error_doc("No such job (or not the caller's)."),
        429: error_doc("The tenant has too many open event streams; see Retry-After."),
    },
)
async def job_events(
    request: Request,
    deps: DepsDep,
    tenant: TenantDep,
    user_id: UserDep,
    job_id: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_query: Annotated[int | None, Query(alias="last_event_id", ge=0)] = None,
) -> StreamingResponse:
    """The job's events (queued, started, status, progress, preview, output, and the end)."""
    seen = _last_seen(last_event_id, last_event_id_query)
    return await open_stream(deps, request, tenant.id, user_id, job_id, seen)


#: How a face writes one event of a job as a text/event-stream frame.
Frame = Callable[[Deps, Job, JobEvent], str]


def v1_frame(_deps: Deps, _job: Job, event: JobEvent) -> str:
    return sse(event)


async def open_stream(
    deps: Deps,
    request: Request,
    tenant_id: str,
    user_id: str,
    job_id: str,
    seen: int,
    frame: Frame = v1_frame,
) -> StreamingResponse:
    """The job's event stream after event `seen`, holding one of the tenant's stream places
    (404 if not the caller's job, 429 beyond the places); each face brings its `frame`."""
    if await run_in_threadpool(owned_job, deps, tenant_id, user_id, job_id) is None:
        raise ApiError(404, "not_found", "no such job")
    settings = deps.settings
    lease = await run_in_threadpool(
        acquire,
        deps.backend.kv(STREAMS_DICT),
        tenant_id,
        settings.events_max_streams_per_tenant,
        settings.events_stream_lease_s,
        deps.clock,
    )
    if lease is None:
        raise ApiError(
            429,
            "too_many_streams",
            f"this tenant has {settings.events_max_streams_per_tenant} event streams open "
            "(the limit); close one or retry later",
            headers={"Retry-After": str(settings.cap_retry_after_s)},
        )
    return StreamingResponse(
        _stream(deps, request, job_id, seen, lease, frame),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    deps: Deps, request: Request, job_id: str, seen: int, lease: StreamLease, frame: Frame
) -> AsyncIterator[str]:
    settings = deps.settings
    started = time.monotonic()
    renewed = beat = started
    try:
        yield f"retry: {RECONNECT_MS}\n\n"
        while True:
            job = await run_in_threadpool(deps.jobs.find, job_id)
            if job is None:
                return  # purged after its retention
            for event in stream_of(job, lambda out: sign_output(deps, out)):
                if event.id <= seen:
                    continue
                yield frame(deps, job, event)
                seen, beat = event.id, time.monotonic()
                if is_terminal_event(event):
                    return
            if job.is_terminal:
                return  # the client had seen the end already
            now = time.monotonic()
            if now - started >= settings.events_stream_max_s or await request.is_disconnected():
                return
            if now - renewed >= settings.events_stream_lease_s / 3:
                if not await run_in_threadpool(lease.renew):
                    return  # taken over: this stream was presumed dead
                renewed = now
            if now - beat >= KEEPALIVE_S:
                yield ": keepalive\n\n"
                beat = now
            await asyncio.sleep(settings.events_poll_interval_s)
    finally:
        # Not in a thread: a cancelled stream cannot await; a failure is cured by the lease.
        with contextlib.suppress(Exception):  # the lease runs out by itself
            lease.release()
