"""A job's event log: recorded with the writes the pipeline already makes, read as a stream.

Events ride on the job record (`Job.events`, ids from `Job.event_seq`): the holder
appends them to the record it is about to save anyway (the start of a stage, the
hand-off, the render's progress write every `progress_interval_s`), so an event costs
no store call of its own, on Modal neither, and it survives any worker restart. The
log is bounded: only the newest `events_max_progress` progress and preview events are
kept (each supersedes the one before); the others are one per stage or status change.

Three kinds of event are never stored but derived on reading (`stream_of`), so no
writer has to know them: `queued` (id 1, from the admitted record), one `output` per
saved file with a URL signed at reading, and the one terminal event, `completed`,
`failed` or `cancelled` (from the terminal decision, whoever made it). Ids are
monotonic per job, so a client resumes with `Last-Event-ID` and misses nothing.

Opt-in webhooks (`app.engine.webhook_events.on_job_event`) are sent from the same two
places that record `started` and `progress`: the stage start and the render heartbeat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from app.core.models import (
    TERMINAL_STATUSES,
    Job,
    JobEvent,
    JobStatus,
    OutputRef,
    Stage,
    StatusDetail,
)
from app.engine.deps import Deps

QUEUED = "queued"
STARTED = "started"
STATUS = "status"
PROGRESS = "progress"
PREVIEW = "preview"
OUTPUT = "output"
#: Superseded by the next of their kind: only the newest few are kept in the record.
_TRIMMED = frozenset({PROGRESS, PREVIEW})
#: Previews weigh kilobytes each: the record keeps only the newest.
_MAX_PREVIEWS = 1
#: `queued` is id 1; stored events start after it.
_QUEUED_ID = 1


def record_event(deps: Deps, job: Job, kind: str, data: dict[str, Any]) -> Job:
    """The job with one event appended to its log (the caller saves it, as it would anyway)."""
    seq = max(job.event_seq, _QUEUED_ID) + 1
    event = JobEvent(id=seq, type=kind, at=deps.clock(), data=data)
    events = _bounded([*job.events, event], deps.settings.events_max_progress)
    return job.model_copy(update={"events": events, "event_seq": seq})


def record_started(deps: Deps, job: Job, stage: Stage, attempt: int) -> Job:
    """`started` for a stage, once per stage (a retry of the same stage records nothing)."""
    last = next((e for e in reversed(job.events) if e.type == STARTED), None)
    if last is not None and last.data.get("stage") == stage.value:
        return job
    return record_event(deps, job, STARTED, {"stage": stage.value, "attempt": attempt})


def record_detail(deps: Deps, job: Job, detail: StatusDetail, **data: Any) -> Job:
    """Set the job's status detail; a `status` event is recorded when it changes."""
    if job.detail is detail:
        return job
    job = job.model_copy(update={"detail": detail})
    return record_event(deps, job, STATUS, {"detail": detail.value, **data})


def _bounded(events: list[JobEvent], keep: int) -> list[JobEvent]:
    """Drop the oldest progress and preview events beyond the bounds."""
    previews = [e.id for e in events if e.type == PREVIEW]
    trimmed = [e.id for e in events if e.type in _TRIMMED]
    drop = set(previews[:-_MAX_PREVIEWS]) | set(trimmed[: max(0, len(trimmed) - keep)])
    return [e for e in events if e.id not in drop] if drop else events


def stream_of(job: Job, sign: Callable[[OutputRef], str]) -> list[JobEvent]:
    """Every event of the job as a client sees it, in id order (`sign`: an output's URL)."""
    events = [
        JobEvent(
            id=_QUEUED_ID,
            type=QUEUED,
            at=job.created_at,
            data={"queue_position": job.queue_position},
        )
    ]
    stored: Iterable[JobEvent] = job.events
    if job.is_terminal and job.finished_at is not None:
        # A holder that had not yet noticed the decision may have written after it:
        # those events would shift the derived ids below, so they are not shown.
        finished = job.finished_at
        stored = [e for e in job.events if e.at <= finished]
    events.extend(stored)
    if not job.is_terminal:
        return events
    seq = events[-1].id
    if job.status is JobStatus.COMPLETED:
        for out in job.outputs:
            seq += 1
            data = {
                "filename": out.filename,
                "content_type": out.content_type,
                "size": out.size,
                "url": sign(out),
            }
            events.append(
                JobEvent(id=seq, type=OUTPUT, at=job.finished_at or job.created_at, data=data)
            )
    terminal: dict[str, Any] = {"status": job.status.value, "outputs": len(job.outputs)}
    if job.error is not None:
        terminal["error"] = job.error.model_dump()
    events.append(
        JobEvent(
            id=seq + 1, type=job.status.value, at=job.finished_at or job.created_at, data=terminal
        )
    )
    return events


def is_terminal_event(event: JobEvent) -> bool:
    """Whether the event ends the stream."""
    return event.type in {status.value for status in TERMINAL_STATUSES}
