"""Several prompts of one client queued in ComfyUI at once, over one websocket.

A render worker keeps the next prompt waiting in ComfyUI's queue while one runs; each
`run` must still be exact about its own prompt: its progress, its cancel, its outputs.
Run against the double and (marker `comfyui`, with COMFYUI_URL) a real ComfyUI.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.adapters.comfy import ComfyClient, RenderProgress, RenderResult
from app.core.errors import RenderCancelled
from tests.integration.comfy_target import Target, color, invert_workflow, new_id, slow_workflow
from tests.support.waiting import wait_until


@pytest.fixture
def client(comfy_target: Target) -> Iterator[ComfyClient]:
    with ComfyClient(comfy_target.url, unavailable_grace_s=1.0) as client:
        yield client


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


class Run:
    """One `client.run` on a thread, with what it reported."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        client: ComfyClient,
        workflow: dict[str, Any],
        should_cancel: Callable[[], bool] = lambda: False,
    ) -> None:
        self.prompt_id = new_id()
        self.reports: list[RenderProgress] = []
        self.future: Future[RenderResult] = pool.submit(
            client.run,
            workflow,
            prompt_id=self.prompt_id,
            deadline_s=time.time() + 120,
            should_cancel=should_cancel,
            on_progress=self.reports.append,
            poll_interval_s=0.05,
            progress_interval_s=0.0,
        )

    def result(self) -> RenderResult:
        return self.future.result(timeout=120)


def queue_of(target: Target) -> tuple[list[str], list[str]]:
    """The prompt ids running and pending in ComfyUI."""
    body = httpx.get(f"{target.url}/queue", timeout=5).json()
    return [i[1] for i in body["queue_running"]], [i[1] for i in body["queue_pending"]]


def wait_queued_behind(target: Target, first: Run, second: Run) -> None:
    """Until `first` runs in ComfyUI while `second` waits in its queue."""

    def both() -> bool:
        running, pending = queue_of(target)
        return first.prompt_id in running and second.prompt_id in pending

    wait_until(both, timeout_s=60, interval_s=0.02, what="one prompt running, one queued")


def test_two_prompts_wait_in_comfyui_at_once_and_both_complete(
    client: ComfyClient, comfy_target: Target, pool: ThreadPoolExecutor
) -> None:
    # Given one client (one websocket) and a slow prompt already running
    comfy_target.make_slow()
    first = Run(pool, client, slow_workflow(color(), size=256, blurs=3))
    wait_until(lambda: first.prompt_id in queue_of(comfy_target)[0], timeout_s=60, interval_s=0.02)

    # When a second prompt is run through the same client
    second = Run(pool, client, invert_workflow(color(), prefix="t_pipe_second"))

    # Then it waits in ComfyUI's queue behind the first, and both finish with their own
    # outputs, the second's taken from its websocket messages
    wait_queued_behind(comfy_target, first, second)
    a, b = first.result(), second.result()
    assert [o.node_id for o in a.outputs] == ["99"]
    assert [o.node_id for o in b.outputs] == ["3"]
    assert b.outputs[0].filename.startswith("t_pipe_second")
    if comfy_target.double is not None:
        assert len(comfy_target.double.sockets) == 1  # one websocket for both prompts


def test_cancelling_the_queued_prompt_removes_it_and_the_running_one_completes(
    client: ComfyClient, comfy_target: Target, pool: ThreadPoolExecutor
) -> None:
    # Given a running prompt and a second one queued behind it
    comfy_target.make_slow()
    cancel = threading.Event()
    first = Run(pool, client, slow_workflow(color(), size=256, blurs=3))
    wait_until(lambda: first.prompt_id in queue_of(comfy_target)[0], timeout_s=60, interval_s=0.02)
    second = Run(pool, client, invert_workflow(color()), should_cancel=cancel.is_set)
    wait_queued_behind(comfy_target, first, second)

    # When the queued one is cancelled
    cancel.set()

    # Then it leaves ComfyUI's queue without running, and the running one is untouched
    with pytest.raises(RenderCancelled):
        second.result()
    running, pending = queue_of(comfy_target)
    assert second.prompt_id not in running + pending
    assert first.prompt_id in running  # not interrupted by the other's cancel
    result = first.result()
    assert [o.node_id for o in result.outputs] == ["99"]
    history = httpx.get(f"{comfy_target.url}/history/{second.prompt_id}", timeout=5).json()
    assert history == {}  # it never ran


def test_progress_goes_to_the_run_of_its_prompt(
    client: ComfyClient, comfy_target: Target, pool: ThreadPoolExecutor
) -> None:
    # Given two different graphs queued at once through one client
    comfy_target.make_slow()
    first = Run(pool, client, slow_workflow(color(), size=256, blurs=2))
    wait_until(lambda: first.prompt_id in queue_of(comfy_target)[0], timeout_s=60, interval_s=0.02)
    second = Run(pool, client, invert_workflow(color()))
    first.result()
    second.result()

    # Then each run heard only of its own nodes, and each ended at 1.0
    first_types = {r.node_type for r in first.reports if r.node_type}
    second_types = {r.node_type for r in second.reports if r.node_type}
    assert "ImageBlur" in first_types and "ImageInvert" not in first_types
    assert "ImageInvert" in second_types and "ImageBlur" not in second_types
    assert first.reports[-1].fraction == 1.0 and second.reports[-1].fraction == 1.0
    assert [r.nodes_total for r in second.reports][-1] == 3


def test_outputs_come_from_the_websocket_without_a_history_read(
    comfy_target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a client whose socket stays up for the whole run
    with ComfyClient(comfy_target.url, history_check_s=60.0) as client:
        reads: list[str] = []
        read = client.history

        def counted(prompt_id: str, **kwargs: Any) -> Any:
            reads.append(prompt_id)
            return read(prompt_id, **kwargs)

        monkeypatch.setattr(client, "history", counted)

        # When a prompt runs
        result = client.run(
            invert_workflow(color()),
            prompt_id=new_id(),
            deadline_s=time.time() + 60,
            should_cancel=lambda: False,
            on_progress=lambda _: None,
        )

    # Then its outputs came from its `executed` message: no GET /history
    assert [(o.node_id, o.type) for o in result.outputs] == [("3", "output")]
    assert reads == []
