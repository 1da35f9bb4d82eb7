"""The v2 events stream's source: one function from a job (and `Last-Event-ID`) to events.

The live event log (`GET /v1/jobs/{id}/events`) is built elsewhere; it is wired in by
setting `ingress`'s app state `v2_events` to an `EventSource` (see `source_of`). Until
then `snapshot_events` answers: the job's state now (a `status` event, its `progress`,
and on success an `output` per file), after which the stream ends. That is what the
spec promises a client on connect; a client that needs later changes reconnects or polls
`GET /api/v2/jobs/{id}`, which the spec makes the source of truth anyway.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from app.api.v2.mapping import to_v2
from app.core.models import Job
from app.engine.deps import Deps


@dataclass(frozen=True, slots=True)
class V2Event:
    """One SSE frame: `event:` name (the spec's catalogue), JSON `data`, optional `id:`."""

    event: str  #: status | progress | preview | output | log
    data: dict[str, Any]
    id: str | None = None

    def frame(self) -> bytes:
        lines = [f"event: {self.event}"]
        if self.id is not None:
            lines.append(f"id: {self.id}")
        lines.append("data: " + json.dumps(self.data, separators=(",", ":")))
        return ("\n".join(lines) + "\n\n").encode()


#: (deps, job, Last-Event-ID or None) -> the events to send, ending after the terminal one.
EventSource = Callable[[Deps, Job, str | None], Iterator[V2Event]]


def snapshot_events(deps: Deps, job: Job, last_event_id: str | None) -> Iterator[V2Event]:
    """The stand-in source: the job's current state as events, then the end."""
    view = to_v2(deps, job)
    yield V2Event("status", {"status": view.status, "queue_position": view.queue_position})
    if view.progress is not None:
        yield V2Event("progress", view.progress.model_dump(mode="json"))
    for output in view.outputs:
        yield V2Event("output", output.model_dump(mode="json"))


def source_of(state: Any) -> EventSource:
    """The source the app was given (`app.state.v2_events`), else the snapshot stand-in."""
    source: EventSource | None = getattr(state, "v2_events", None)
    return source or snapshot_events
