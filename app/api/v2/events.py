"""The v2 face of a job's event log: each of our events as the spec's SSE frame.

The stream itself is `GET /v1/jobs/{id}/events`'s (`app.api.events.open_stream`): the
same log, ids, resume with `Last-Event-ID`, per-tenant stream places and end after the
terminal event. Only the frames differ: the spec's catalogue is `status`, `progress`,
`preview` and `output`; ours adds stage starts and wait reasons, shown as `status`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.api.v2.mapping import STATUS_TO_V2, output_type, progress_from
from app.api.v2.schemas import V2Output
from app.core.models import Job, JobEvent, JobStatus, StatusDetail
from app.engine import events as ours
from app.engine.deps import Deps


@dataclass(frozen=True, slots=True)
class V2Event:
    """One SSE frame: `event:` name (the spec's catalogue), JSON `data`, optional `id:`."""

    event: str  #: status | progress | preview | output | log
    data: dict[str, Any]
    id: str | None = None

    def frame(self) -> str:
        lines = [f"event: {self.event}"]
        if self.id is not None:
            lines.append(f"id: {self.id}")
        lines.append("data: " + json.dumps(self.data, separators=(",", ":")))
        return "\n".join(lines) + "\n\n"


def v2_frame(deps: Deps, job: Job, event: JobEvent) -> str:
    """Our event `event` of `job` as the spec's frame (its id kept, so resuming works)."""
    return _v2_event(deps, job, event).frame()


def _v2_event(deps: Deps, job: Job, event: JobEvent) -> V2Event:
    eid = str(event.id)
    data = event.data
    if event.type == ours.QUEUED:
        queued = {"status": "queued", "queue_position": data.get("queue_position")}
        return V2Event("status", queued, eid)
    if event.type == ours.PROGRESS:
        fraction = float(data.get("fraction") or 0.0)
        return V2Event("progress", progress_from(data, fraction).model_dump(mode="json"), eid)
    if event.type == ours.PREVIEW:
        return V2Event("preview", dict(data), eid)
    if event.type == ours.OUTPUT:
        names = [out.filename for out in job.outputs]
        index = names.index(data["filename"]) if data["filename"] in names else 0
        expires = datetime.fromtimestamp(deps.clock() + deps.settings.presign_expiry_s, UTC)
        output = V2Output(
            node_id="",
            name=str(data["filename"]),
            type=output_type(str(data["content_type"])),
            content_type=str(data["content_type"]),
            size_bytes=int(data["size"]),
            id=f"{job.id}.{index}",
            url=str(data["url"]),
            url_expires_at=expires,
        )
        return V2Event("output", output.model_dump(mode="json"), eid)
    if ours.is_terminal_event(event):
        status = STATUS_TO_V2[JobStatus(event.type)]
        frame: dict[str, Any] = {"status": status, "queue_position": None}
        if job.error is not None and status != "succeeded":
            frame["error"] = {"code": job.error.code, "message": job.error.message}
        return V2Event("status", frame, eid)
    # A stage start or a wait reason: the job is queued or running, and says why.
    waiting = data.get("detail") == StatusDetail.RENDERER_UNAVAILABLE.value  # kept queued
    detail = {"status": "queued" if waiting else "running", "queue_position": None}
    if "detail" in data:
        detail["message"] = str(data["detail"])
    return V2Event("status", detail, eid)
