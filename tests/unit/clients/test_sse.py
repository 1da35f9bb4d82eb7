"""Parsing a text/event-stream."""

from __future__ import annotations

from app.clients.sse import parse_events


def test_events_comments_and_broken_events() -> None:
    lines = [
        "retry: 2000",
        "",
        ": keepalive",
        "id: 1",
        "event: queued",
        'data: {"queue_position": 3}',
        "",
        "id: x",
        "event: bad",
        "data: {}",
        "",
        "id: 2",
        "event: progress",
        'data: {"value": 1,',
        'data:  "max": 2}',
        "",
    ]
    events = list(parse_events(lines))
    assert [(e.id, e.type) for e in events] == [(1, "queued"), (2, "progress")]
    assert events[1].data == {"value": 1, "max": 2}
