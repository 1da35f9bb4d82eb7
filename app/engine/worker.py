"""Stage workers: drain a stage's queue with the stage functions; shared by both backends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from app.core.errors import ComfyUnavailable
from app.core.logs import get_logger
from app.core.models import Stage
from app.engine.deps import Deps, build_deps
from app.engine.pipeline import note_renderer_unavailable, without_record

__all__ = ["Deps", "MessageHandler", "build_deps", "drain_stage", "run_slots"]

#: Handles one raw message of a stage (the stages layer supplies it: `app.stages.handler`).
MessageHandler = Callable[[str], None]


def drain_stage(
    stage: Stage,
    deps: Deps,
    handle: MessageHandler,
    *,
    max_items: int = 100,
    wait_s: float = 0.0,
    before_each: Callable[[], object] | None = None,
    guard: Callable[[], AbstractContextManager[object]] = nullcontext,
    keep_going: Callable[[], bool] | None = None,
) -> int:
    """Process `stage` messages until the queue is empty or `max_items` are done.

    `before_each` runs before each message (the render container's health check); if it
    raises `ComfyUnavailable` the message goes back on the queue, untouched, and the error
    propagates so the container can stop taking work. Each message is handled inside
    `guard()` (on Modal the container's scratch gate: no reload under its open files).
    `keep_going` is asked before each message is taken (on Modal: is there still time
    for one more worst-case message before the function's timeout?); False stops here.
    """
    queue = deps.queue(stage)
    done = 0
    while done < max_items:
        if keep_going is not None and not keep_going():
            break
        raw = queue.get(timeout_s=wait_s)
        if raw is None:
            break
        if before_each is not None:
            try:
                before_each()
            except ComfyUnavailable:
                if stage is Stage.RENDER:
                    try:
                        raw = note_renderer_unavailable(deps, raw)
                    except Exception:  # noqa: BLE001 - the status detail is a courtesy
                        get_logger(stage=stage.value).exception("renderer_unavailable_note_failed")
                        raw = without_record(raw)
                queue.put(raw)
                get_logger(stage=stage.value).warning("message_returned_unhealthy_worker")
                raise
        with guard():
            handle(raw)
        done += 1
    return done


def run_slots(slots: int, serve: Callable[[], None], *, name: str) -> None:
    """Run `serve` in `slots` threads at once, this one among them; return when all end.

    Each slot is a whole drain loop over the same Deps, so a render worker holds up to
    `slots` jobs (the SQLite backend gives each thread its own connection; the
    ComfyClient is shared on purpose: one websocket, one HTTP pool).
    """
    extra = [
        threading.Thread(target=serve, name=f"{name}-slot{index}", daemon=True)
        for index in range(1, slots)
    ]
    for thread in extra:
        thread.start()
    serve()
    for thread in extra:
        thread.join()
