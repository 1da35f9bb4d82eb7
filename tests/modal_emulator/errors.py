"""Errors the emulator raises that real Modal would not raise (it would hang instead)."""

from __future__ import annotations

from modal.exception import InputCancellation


class EmulatedHang(BaseException):
    """A call that would block forever on Modal (a `put` on a full partition without timeout).

    A `BaseException`, like `InputCancellation`, so `except Exception` in the code under
    test cannot swallow it: a hang must surface in the test, never turn into a retry.
    """

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class ContainerStopped(InputCancellation):
    """Raised in an input whose container was stopped under it (a sibling's cancel, a crash).

    Modal sends SIGINT to the whole container when one input of a sync function with
    `max_inputs > 1` is cancelled (`modal/_container_entrypoint.py` lines 204-217): the other
    inputs die mid-message. A subclass of `InputCancellation` so code that handles
    cancellation sees it; tests can tell the two apart.
    """
