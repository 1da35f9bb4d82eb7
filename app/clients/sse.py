"""Reading a Server-Sent Events stream line by line (the text/event-stream format)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One event of the stream: its id, its type and its JSON data."""

    id: int
    type: str
    data: dict[str, Any]


def parse_events(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """The events in a stream of lines; comments, `retry:` and malformed events skipped."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                event = _event(fields, "\n".join(data))
                if event is not None:
                    yield event
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        else:
            fields[name] = value


def _event(fields: dict[str, str], raw: str) -> ServerEvent | None:
    try:
        data = json.loads(raw)
        event_id = int(fields.get("id", ""))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return ServerEvent(id=event_id, type=fields.get("event", "message"), data=data)
