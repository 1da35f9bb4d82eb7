"""The ComfyUI client when things go wrong: scenarios only the double can stage."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from app.adapters.comfy import ComfyClient, RenderProgress, RenderResult
from app.core.errors import ComfyUnavailable
from tests.comfy_double import ComfyDouble
from tests.integration.comfy_target import invert_workflow, new_id, slow_workflow
from tests.support.waiting import wait_until


def never() -> bool:
    return False


def run(
    client: ComfyClient, workflow: dict[str, Any], **kwargs: Any
) -> tuple[RenderResult, list[RenderProgress]]:
    reports: list[RenderProgress] = []
    options: dict[str, Any] = {
        "prompt_id": new_id(),
        "deadline_s": time.time() + 30,
        "should_cancel": never,
        "on_progress": reports.append,
        "poll_interval_s": 0.05,
        "progress_interval_s": 0.0,
    }
    options.update(kwargs)
    return client.run(workflow, **options), reports


def test_websocket_drop_falls_back_to_history(comfy_double: ComfyDouble) -> None:
    # Given a server that drops every websocket when node 2 starts and refuses new ones
    comfy_double.drop_ws_at_node = "2"
    comfy_double.refuse_ws = True
    comfy_double.node_delay_s = {"ImageInvert": 0.3}
    client = ComfyClient(comfy_double.url)

    # When a workflow runs through it
    result, reports = run(client, invert_workflow(7))

    # Then the history still gives the outputs and the final progress
    assert [o.node_id for o in result.outputs] == ["3"]
    assert reports[-1].fraction == 1.0
    assert not comfy_double.sockets


def test_websocket_drop_then_reconnect(comfy_double: ComfyDouble) -> None:
    # Given a dropped websocket that may reconnect while a slow node still runs
    comfy_double.drop_ws_at_node = "10"
    comfy_double.node_delay_s = {"ImageBlur": 0.8}
    client = ComfyClient(comfy_double.url, history_check_s=60.0)

    result, reports = run(client, slow_workflow(3, size=16, blurs=3))

    # Then the run finishes, and progress kept coming after the reconnect
    assert [o.node_id for o in result.outputs] == ["99"]
    assert "12" in {p.node_id for p in reports}
    fractions = [p.fraction for p in reports]
    assert fractions == sorted(fractions)


def test_crash_mid_run_is_unavailable(comfy_double: ComfyDouble) -> None:
    comfy_double.crash_at_node = "2"
    client = ComfyClient(comfy_double.url, unavailable_grace_s=0.5, connect_timeout_s=1.0)
    started = time.monotonic()

    with pytest.raises(ComfyUnavailable) as caught:
        run(client, invert_workflow(9))

    assert caught.value.retryable is True
    assert time.monotonic() - started < 5


def test_prompt_deleted_by_someone_else_is_noticed(comfy_double: ComfyDouble) -> None:
    # Given our prompt waiting behind a slow one
    comfy_double.node_delay_s = {"ImageBlur": 1.0}
    blocker = httpx.post(
        f"{comfy_double.url}/prompt", json={"prompt": slow_workflow(1, size=8, blurs=2)}
    )
    assert blocker.status_code == 200
    prompt_id = new_id()
    client = ComfyClient(comfy_double.url, history_check_s=0.2)

    def delete_ours() -> None:
        wait_until(
            lambda: any(item.prompt_id == prompt_id for item in comfy_double.pending),
            timeout_s=10,
            what="our prompt queued",
        )
        httpx.post(f"{comfy_double.url}/queue", json={"delete": [prompt_id]})

    threading.Thread(target=delete_ours, daemon=True).start()

    # When someone else deletes it from the queue, the client stops waiting for it
    with pytest.raises(ComfyUnavailable, match="no longer knows prompt"):
        run(client, invert_workflow(4), prompt_id=prompt_id)


def test_other_clients_broadcasts_are_ignored(comfy_double: ComfyDouble) -> None:
    # Given a prompt without client id ahead of ours: its progress_state and its
    # interruption are broadcast to every socket, ours included
    comfy_double.node_delay_s = {"ImageBlur": 0.3}
    foreign = slow_workflow(2, size=8, blurs=2)
    foreign_ids = set(foreign)
    posted = httpx.post(f"{comfy_double.url}/prompt", json={"prompt": foreign})
    assert posted.status_code == 200
    foreign_id = posted.json()["prompt_id"]

    def foreign_running_with_ours_queued() -> bool:
        running = comfy_double.running
        return (
            running is not None and running.prompt_id == foreign_id and bool(comfy_double.pending)
        )

    def interrupt_foreign() -> None:
        wait_until(foreign_running_with_ours_queued, timeout_s=10, what="ours queued behind it")
        httpx.post(f"{comfy_double.url}/interrupt")

    threading.Thread(target=interrupt_foreign, daemon=True).start()
    workflow = invert_workflow(5)
    workflow = {str(int(k) + 200): v for k, v in workflow.items()}
    workflow["202"]["inputs"]["image"] = ["201", 0]
    workflow["203"]["inputs"]["images"] = ["202", 0]

    # When our prompt runs after it
    result, reports = run(ComfyClient(comfy_double.url), workflow)

    # Then ours succeeded, and no progress report named a node of the other prompt
    assert [o.node_id for o in result.outputs] == ["203"]
    assert not ({p.node_id for p in reports} & foreign_ids)
    foreign_entry = comfy_double.history[posted.json()["prompt_id"]]
    assert foreign_entry["status"]["messages"][-1][0] == "execution_interrupted"


def test_progress_is_throttled(comfy_double: ComfyDouble) -> None:
    comfy_double.node_delay_s = {"ImageBlur": 0.15}
    started = time.monotonic()

    _, reports = run(
        ComfyClient(comfy_double.url),
        slow_workflow(6, size=8, blurs=6),
        progress_interval_s=0.3,
    )

    elapsed = time.monotonic() - started
    assert elapsed > 0.9
    assert len(reports) <= elapsed / 0.3 + 2
    assert len(reports) >= 3
    assert reports[-1].fraction == 1.0


def test_failing_progress_callback_gives_the_prompt_up(comfy_double: ComfyDouble) -> None:
    comfy_double.node_delay_s = {"ImageBlur": 0.3}
    prompt_id = new_id()

    def explode(progress: RenderProgress) -> None:
        if progress.node_type == "ImageBlur":
            raise OSError("state store down")

    with pytest.raises(OSError, match="state store down"):
        run(
            ComfyClient(comfy_double.url),
            slow_workflow(8, size=8, blurs=3),
            prompt_id=prompt_id,
            on_progress=explode,
        )

    wait_until(lambda: prompt_id in comfy_double.history, timeout_s=5, what="history entry")
    assert comfy_double.history[prompt_id]["status"]["messages"][-1][0] == "execution_interrupted"


def test_double_speaks_first_status_and_feature_flags(comfy_double: ComfyDouble) -> None:
    ws_url = comfy_double.url.replace("http", "ws") + "/ws?clientId=probe"
    with connect(ws_url) as ws:
        first = ws.recv(timeout=5)
        ws.send('{"type": "feature_flags", "data": {"supports_preview_metadata": true}}')
        flags = ws.recv(timeout=5)

    assert '"sid": "probe"' in first
    assert '"max_upload_size": 104857600' in flags


def test_double_view_refuses_traversal_and_missing(comfy_double: ComfyDouble) -> None:
    view = f"{comfy_double.url}/view"
    traversal = httpx.get(view, params={"filename": "../x.png", "type": "output"})
    missing = httpx.get(view, params={"filename": "nope.png", "type": "output"})
    unknown = httpx.get(f"{comfy_double.url}/history/nope")

    assert traversal.status_code == 400
    assert missing.status_code == 404
    assert unknown.json() == {}
