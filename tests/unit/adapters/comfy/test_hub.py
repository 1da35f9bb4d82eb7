"""The shared websocket's routing: each message to the mailbox of its prompt (no socket)."""

from __future__ import annotations

import json
from typing import Any

from app.adapters.comfy.hub import LOST, SocketHub


def text(kind: str, **data: Any) -> str:
    return json.dumps({"type": kind, "data": data})


def drain(hub: SocketHub, prompt_id: str) -> list[Any]:
    box = hub._boxes[prompt_id]
    items = []
    while (item := box.get(0)) is not None:
        items.append(item)
    return items


def test_messages_go_to_their_prompt_and_previews_to_the_running_one() -> None:
    hub = SocketHub("http://127.0.0.1:9", "cid")
    hub.register("a")
    hub.register("b")
    frame = b"\x00\x00\x00\x01\x00\x00\x00\x02png"

    for raw in (
        text("status", status={}),  # about no prompt
        text("execution_start", prompt_id="a"),
        text("executing", node="1", prompt_id="a"),
        frame,  # while a runs
        text("execution_success", prompt_id="a"),
        text("executing", node=None, prompt_id="a"),
        frame,  # between prompts: nobody's
        text("execution_start", prompt_id="b"),
        frame,
        text("execution_interrupted", prompt_id="other"),
    ):
        hub._route(raw)

    a, b = drain(hub, "a"), drain(hub, "b")
    assert [m if isinstance(m, bytes) else m["type"] for m in a] == [
        "execution_start",
        "executing",
        frame,
        "execution_success",
        "executing",
    ]
    assert [m if isinstance(m, bytes) else m["type"] for m in b] == ["execution_start", frame]


def test_an_unregistered_prompt_gets_nothing_and_a_drop_marks_a_gap() -> None:
    hub = SocketHub("http://127.0.0.1:9", "cid")
    box = hub.register("a")
    hub.unregister("a")
    hub._route(text("execution_start", prompt_id="a"))
    assert box.get(0) is None

    box = hub.register("b")
    assert not box.gap
    box.put(LOST)
    assert box.gap and box.get(0) is LOST
