"""Which emulated container and input the current thread or task is running in.

Modal sets a context variable per input (`modal/_runtime/execution_context.py`,
`current_function_call_id`); the emulator does the same so `Volume.reload()` knows whose view
to refresh and a cancel can be delivered to the right input.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.modal_emulator.functions import Container


class InputContext:
    """One running input: its container, its call id and a pending cancellation."""

    def __init__(self, container: Container, call_id: str) -> None:
        self.container = container
        self.call_id = call_id
        self._pending: BaseException | None = None
        self._lock = threading.Lock()

    def deliver(self, exc: BaseException) -> None:
        """Arrange for `exc` to be raised at this input's next emulated call or wait."""
        with self._lock:
            if self._pending is None:
                self._pending = exc

    def raise_if_cancelled(self) -> None:
        with self._lock:
            exc, self._pending = self._pending, None
        if exc is not None:
            raise exc


_current: ContextVar[InputContext | None] = ContextVar("modal_emulator_input", default=None)


def current_input() -> InputContext | None:
    """The input running here, or None outside any emulated container."""
    return _current.get()


def check_cancelled() -> None:
    """Raise the current input's pending cancellation, if any (the signal's delivery point)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.raise_if_cancelled()
