"""The few Modal calls the pipeline makes from inside its stages (cancel, call ids).

The SDK is imported inside each function, so the local backend never loads it; every
function is harmless outside a Modal container.
"""

from __future__ import annotations

from app.core.logs import get_logger

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
    """Cancel a render's Modal function call (besides ComfyUI's cooperative interrupt).

    Returns whether Modal accepted the cancel; a failure is logged and otherwise
    ignored, because the job's terminal state is already decided and the interrupt
    still stops the work.
    """
    import modal

    try:
        modal.FunctionCall.from_id(call_id).cancel()
    except Exception as exc:  # noqa: BLE001 - the cancel is already decided
        log.warning("render_call_cancel_failed", call_id=call_id, error=type(exc).__name__)
        return False
    log.info("render_call_cancelled", call_id=call_id)
    return True


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
