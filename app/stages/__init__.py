"""The five stages, and the one place that maps a stage to its function.

Every stage is a plain function of its subject and the deps (`app.engine.pipeline`):
`fetch.run`, `render.run`, `upload.run` and `notify.run` take the job, `intake.run` an
authenticated request. The engine parses, claims, hands off and decides terminal states
for all of them; its worker loop is given a handler (`drain_stage(stage, deps,
handler(...))`), so the engine never imports a stage. `drain` is that call for the
wiring and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.core.models import Stage
from app.engine.deps import Deps
from app.engine.metrics import log_counters
from app.engine.pipeline import StageFn, process_intake_message, process_message
from app.engine.worker import MessageHandler, drain_stage


def stage_functions() -> Mapping[Stage, StageFn]:
    """The stages fed by stage messages, imported on demand (only the worker needs them)."""
    from app.stages import fetch, notify, render, upload

    return {
        Stage.FETCH: fetch.run,
        Stage.RENDER: render.run,
        Stage.UPLOAD: upload.run,
        Stage.NOTIFY: notify.run,
    }


def handler(stage: Stage, deps: Deps) -> MessageHandler:
    """The function that handles one raw message of `stage`."""
    if stage is Stage.INTAKE:
        from app.stages import intake

        return lambda raw: process_intake_message(raw, deps, intake.run)
    functions = stage_functions()
    return lambda raw: process_message(raw, deps, functions)


def drain(stage: Stage, deps: Deps, **options: Any) -> int:
    """Drain `stage`'s queue with its handler (options as `drain_stage`)."""
    try:
        return drain_stage(stage, deps, handler(stage, deps), **options)
    finally:
        log_counters(deps, f"drain:{stage.value}")
