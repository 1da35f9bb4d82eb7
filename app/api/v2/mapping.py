"""Our job record, shown as the v2 spec's `Job`: one place for every name and value mapping.

The table lives in docs/api-v2.md; keep the two in step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.api.v2.schemas import V2Job, V2JobError, V2JobUrls, V2Output, V2OutputType, V2Progress
from app.api.v2.schemas import V2Status as V2StatusName
from app.core.models import Job, JobStatus
from app.engine.deps import Deps
from app.engine.views import present

PREFIX = "/api/v2/jobs"

#: Ours -> theirs. We cancel at once (no `canceling`) and a failed deadline stays `failed`
#: with `error.code` `timeout` (no `expired`).
STATUS_TO_V2: dict[JobStatus, V2StatusName] = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.COMPLETED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "canceled",
}
#: Theirs -> ours, for the list filter; `canceling` and `expired` match no job (None).
STATUS_FROM_V2: dict[str, JobStatus | None] = {
    **{v2: ours for ours, v2 in STATUS_TO_V2.items()},
    "canceling": None,
    "expired": None,
}
_KIND_BY_MEDIA: dict[str, V2OutputType] = {
    "image": "image",
    "video": "video",
    "audio": "audio",
    "text": "text",
}


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def output_type(content_type: str) -> V2OutputType:
    """The spec's normalised kind from the media type; anything else is a `file`."""
    return _KIND_BY_MEDIA.get(content_type.partition("/")[0], "file")


def progress_of(job: Job) -> V2Progress | None:
    """The render's latest per-node report as the spec's snapshot; None before any."""
    if not job.progress_detail and job.progress <= 0:
        return None
    return progress_from(job.progress_detail, job.progress)


def progress_from(detail: dict[str, Any], fraction: float) -> V2Progress:
    """One per-node report (`Job.progress_detail`, a `progress` event's data) in v2 terms."""
    node_class = detail.get("node_type")
    step, steps = detail.get("value"), detail.get("max")
    message = f"{node_class} {step}/{steps}" if node_class and steps else None
    return V2Progress(
        value=min(max(fraction, 0.0), 1.0),
        nodes_done=int(detail.get("nodes_done") or 0),
        nodes_total=int(detail.get("nodes_total") or 0),
        current_node=detail.get("node_id"),
        current_node_class=node_class,
        step=None if step is None else int(step),
        steps=None if steps is None else int(steps),
        message=message,
    )


def expires_at(deps: Deps, job: Job) -> datetime:
    """When the job is purged: retention after it ended, or after its deadline until then."""
    ended = job.finished_at if job.finished_at is not None else job.deadline
    return datetime.fromtimestamp(ended + deps.settings.job_retention_s, UTC)


def to_v2(deps: Deps, job: Job) -> V2Job:
    """The job as the v2 spec shows it, from the view `present` gives (URLs signed now)."""
    view = present(deps, job)
    url_expires = datetime.fromtimestamp(deps.clock() + deps.settings.presign_expiry_s, UTC)
    error = view.error
    created = _at(view.created_at)
    assert created is not None
    return V2Job(
        id=view.id,
        status=STATUS_TO_V2[view.status],
        created_at=created,
        started_at=_at(view.started_at),
        completed_at=_at(view.finished_at),
        expires_at=expires_at(deps, job),
        queue_position=view.queue_position,
        progress=progress_of(job),
        outputs=[
            V2Output(
                node_id="",
                name=out.filename,
                type=output_type(out.content_type),
                content_type=out.content_type,
                size_bytes=out.size,
                id=f"{view.id}.{index}",
                url=out.url,
                url_expires_at=url_expires,
            )
            for index, out in enumerate(view.outputs)
        ],
        error=None
        if error is None
        else V2JobError(
            code=error.code,
            message=error.message,
            node_id=error.node_id,
            class_type=error.node_type,
        ),
        metrics={
            "queue_ms": _ms(view.timings.queue_wait_s),
            "execution_ms": _ms(view.timings.render_s),
        },
        urls=V2JobUrls(
            self=f"{PREFIX}/{view.id}",
            events=f"{PREFIX}/{view.id}/events",
            cancel=f"{PREFIX}/{view.id}/cancel",
        ),
    )
