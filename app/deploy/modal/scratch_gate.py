"""One container's coordination of scratch Volume reloads and commits with open files.

`Volume.reload()` raises while any file of the volume is open in the container ("there
are open files preventing the operation"; modal 1.6.4 `volume.py`, and `commit()` may
reload too). CPU stages run several inputs per container as threads: one input's reload
at job start would fail while a sibling holds an output open for its S3 PUT.

So each input *holds* the gate (shared) while it handles a message, and a reload or a
commit takes it *exclusively*: it waits until no other input of this container is in
the middle of a message. The caller's own hold does not count (it is at a reload point,
with no file open), nor do the holds of other inputs waiting to reload or commit, so
two reloaders never wait for each other. While one waits, new messages wait to start
(writer preference: a steady stream of inputs cannot starve it). The wait is bounded
(`modal_scratch_gate_wait_s`); then the operation is tried anyway, retried while files
stay open until the bound, and a last failure becomes `StorageUnavailable`, a transient
error that retries the stage later instead of failing the job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.core.errors import StorageUnavailable
from app.core.logs import get_logger

#: The SDK's message when open files block a reload (the server's text, PR #1669).
OPEN_FILES = "open files"
#: Pause between tries while files outside any held message stay open.
RETRY_PAUSE_S = 0.05


class ScratchGate:
    """A reader/writer gate: messages share it, reload/commit take it alone."""

    def __init__(self, wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait_s = wait_s
        self._clock = clock
        self._cond = threading.Condition()
        self._holds: dict[int, int] = {}  # thread id -> messages it is handling
        self._parked = 0  # holds of threads now waiting to reload or commit
        self._writers = 0  # threads waiting to reload or commit
        self._exclusive = False

    @property
    def writers_waiting(self) -> int:
        with self._cond:
            return self._writers

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Around one message: the volume is not reloaded under its open files."""
        me = threading.get_ident()
        with self._cond:
            deadline = self._clock() + self.wait_s
            while (self._exclusive or self._writers) and self._clock() < deadline:
                self._cond.wait(max(0.0, deadline - self._clock()))
            self._holds[me] = self._holds.get(me, 0) + 1
        try:
            yield
        finally:
            with self._cond:
                self._holds[me] -= 1
                if not self._holds[me]:
                    del self._holds[me]
                self._cond.notify_all()

    def exclusive(self, operation: Callable[[], None], name: str) -> Callable[[], None]:
        """`operation` (a reload or commit) run only while no sibling is mid-message."""

        def run() -> None:
            deadline = self._clock() + self.wait_s
            while True:
                self._acquire(deadline)
                try:
                    operation()
                    return
                except RuntimeError as exc:
                    if OPEN_FILES not in str(exc) or self._clock() >= deadline:
                        get_logger().warning("scratch_volume_busy", operation=name)
                        raise StorageUnavailable(
                            f"the scratch volume {name} was blocked by open files"
                        ) from exc
                finally:
                    self._release()
                with self._cond:  # files open outside a held message: wait a little
                    self._cond.wait(RETRY_PAUSE_S)

        return run

    def _others_busy(self) -> bool:
        """Another reload/commit runs, or an input not waiting to reload is mid-message."""
        return self._exclusive or sum(self._holds.values()) - self._parked > 0

    def _acquire(self, deadline: float) -> None:
        me = threading.get_ident()
        with self._cond:
            mine = self._holds.get(me, 0)
            self._writers += 1
            self._parked += mine
            try:
                while self._others_busy() and self._clock() < deadline:
                    self._cond.wait(max(0.0, deadline - self._clock()))
            finally:
                self._writers -= 1
                self._parked -= mine
            self._exclusive = True

    def _release(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()
