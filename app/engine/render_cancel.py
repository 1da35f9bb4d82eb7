"""What cancel does besides the terminal decision: on Modal, stop the render's call.

Every canceller (the ingress, the Python client, any process with `build_deps`) gets
this hook from `build_deps`, so `Client.cancel` stops a render exactly as
`DELETE /v1/jobs/{id}` does. The render stage's cooperative interrupt (it polls the
terminal record and interrupts ComfyUI) runs in every case.

`FunctionCall.cancel()` is only safe with one input per container: then Modal raises
`InputCancellation` in that input alone; with `max_inputs > 1` it shuts down the whole
container and the other jobs in it are lost mid-message (modal 1.6.4
`_container_entrypoint.py`). So with `modal_render_max_inputs > 1` the call is never
cancelled and the cooperative interrupt is all there is.
"""

from __future__ import annotations

from app.core.config import Settings
from app.core.logs import get_logger
from app.core.models import Job
from app.engine.deps import CancelHook, no_cancel_hook

log = get_logger(component="render_cancel")


def cancel_call(call_id: str) -> bool:
    """Cancel one Modal function call; False (logged, never raised) if Modal refused.

    A failure is ignored because the job's terminal state is already decided and the
    cooperative interrupt still stops the work.
    """
    import modal  # deferred: the local backend never loads the SDK

    try:
        modal.FunctionCall.from_id(call_id).cancel()
    except Exception as exc:  # noqa: BLE001 - the cancel is already decided
        log.warning("render_call_cancel_failed", call_id=call_id, error=type(exc).__name__)
        return False
    log.info("render_call_cancelled", call_id=call_id)
    return True


def cancel_render(job: Job, max_inputs: int) -> bool:
    """Stop the job's render call if that cannot touch another job; whether it was asked."""
    if not job.render_call_id:
        return False
    if max_inputs != 1:
        log.info("render_call_cancel_skipped", job_id=job.id, max_inputs=max_inputs)
        return False
    return cancel_call(job.render_call_id)


def render_cancel_hook(settings: Settings) -> CancelHook:
    """The `on_cancel` for this deployment's backend."""
    if settings.backend != "modal":
        return no_cancel_hook
    max_inputs = settings.modal_render_max_inputs

    def on_cancel(job: Job) -> None:
        cancel_render(job, max_inputs)

    return on_cancel
