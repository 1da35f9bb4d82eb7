"""Stage workers: drain a stage's queue with the stage functions; shared by both backends."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from app.core.errors import ComfyUnavailable
from app.core.logs import get_logger
from app.core.models import Stage
from app.engine.deps import Deps, build_deps
from app.engine.pipeline import StageFn, process_message

__all__ = ["Deps", "build_deps", "drain_stage", "stage_functions"]


def stage_functions() -> Mapping[Stage, StageFn]:
    """The work stages, imported on demand so a CPU container never loads render's deps."""
    from app.stages import fetch, render, upload

    return {Stage.FETCH: fetch.run, Stage.RENDER: render.run, Stage.UPLOAD: upload.run}


def _handler(stage: Stage, deps: Deps) -> Callable[[str], None]:
    if stage is Stage.INTAKE:
        from app.stages.intake import process_intake_message

        return lambda raw: process_intake_message(raw, deps)
    if stage is Stage.NOTIFY:
        from app.stages.notify import process_notify_message

        return lambda raw: process_notify_message(raw, deps)
    functions = stage_functions()
    return lambda raw: process_message(raw, deps, functions)


def drain_stage(
    stage: Stage,
    deps: Deps,
    *,
    max_items: int = 100,
    wait_s: float = 0.0,
    before_each: Callable[[], object] | None = None,
) -> int:
    """Process `stage` messages until the queue is empty or `max_items` are done.

    `before_each` runs before each message (the render container's health check); if it
    raises `ComfyUnavailable` the message goes back on the queue, untouched, and the error
    propagates so the container can stop taking work.
    """
    handle = _handler(stage, deps)
    queue = deps.queue(stage)
    done = 0
    while done < max_items:
        raw = queue.get(timeout_s=wait_s)
        if raw is None:
            break
        if before_each is not None:
            try:
                before_each()
            except ComfyUnavailable:
                queue.put(raw)
                get_logger(stage=stage.value).warning("message_returned_unhealthy_worker")
                raise
        handle(raw)
        done += 1
    return done
