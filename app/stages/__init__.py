"""The five stages, and the one place that maps a stage to the code handling its messages.

The engine's worker loop is given a handler (`drain_stage(stage, deps, handler(...))`), so
the engine never imports a stage; `drain` is that call for the wiring and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.core.models import Stage
from app.engine.deps import Deps
from app.engine.pipeline import StageFn, process_message
from app.engine.worker import MessageHandler, drain_stage


def stage_functions() -> Mapping[Stage, StageFn]:
    """The work stages, imported on demand so a CPU container never loads render's deps."""
    from app.stages import fetch, render, upload

    return {Stage.FETCH: fetch.run, Stage.RENDER: render.run, Stage.UPLOAD: upload.run}


def handler(stage: Stage, deps: Deps) -> MessageHandler:
    """The function that handles one raw message of `stage`."""
    if stage is Stage.INTAKE:
        from app.stages.intake import process_intake_message

        return lambda raw: process_intake_message(raw, deps)
    if stage is Stage.NOTIFY:
        from app.stages.notify import process_notify_message

        return lambda raw: process_notify_message(raw, deps)
    functions = stage_functions()
    return lambda raw: process_message(raw, deps, functions)


def drain(stage: Stage, deps: Deps, **options: Any) -> int:
    """Drain `stage`'s queue with its handler (options as `drain_stage`)."""
    return drain_stage(stage, deps, handler(stage, deps), **options)
