"""The few Modal calls the pipeline makes from inside its stages (cancel, call ids).

The SDK is imported inside each function, so the local backend never loads it; every
function is harmless outside a Modal container.
"""

from __future__ import annotations

from app.core.logs import get_logger
from app.engine.render_cancel import cancel_call

log = get_logger(component="modal_hooks")


def current_call_id() -> str | None:
    """The id of the Modal function call running now, or None outside Modal."""
    import modal

    if modal.is_local():
        return None
    try:
        return modal.current_function_call_id()
    except Exception as exc:  # noqa: BLE001 - not inside an input (enter hooks)
        log.debug("call_id_unavailable", error=type(exc).__name__)
        return None


def cancel_render_call(call_id: str) -> bool:
    """Cancel a render's Modal function call (see `app.engine.render_cancel`)."""
    return cancel_call(call_id)


def stop_fetching_inputs() -> bool:
    """Ask Modal to send this container no more inputs; False outside a container."""
    import modal
    import modal.experimental

    if modal.is_local():
        return False
    try:
        modal.experimental.stop_fetching_inputs()
    except Exception as exc:  # noqa: BLE001 - the job still goes back to its queue
        log.warning("stop_fetching_inputs_failed", error=type(exc).__name__)
        return False
    return True
