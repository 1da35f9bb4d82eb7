"""Lease renewal while a stage works: a dead holder is noticed in seconds, a slow one never.

The engine wraps every work stage call in `heartbeat(...)`; the job's lease is renewed
every `stage_lease_renew_s` for `stage_lease_s`, so a long render keeps its job while a
killed worker's lease runs out within one lease and `fail_stale` takes the job back. A
holder that was superseded (a newer epoch) is refused and stops renewing; its result is
dropped by the engine's fencing check.

One thread per process renews every running stage's lease, each on its own schedule.
A thread per stage run cost its start and join on every job (about a tenth of an
upload's CPU, issue 13) for a renewal that most stages, done in milliseconds, never make.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.core.logs import get_logger
from app.core.models import Stage
from app.engine.deps import Deps


def renew_once(deps: Deps, job_id: str, stage: Stage, epoch: int) -> bool:
    """One renewal; False when the holder was superseded (stop renewing)."""
    until = deps.clock() + deps.settings.stage_lease_s
    return deps.jobs.renew_lease(job_id, stage, epoch, until)


@dataclass(eq=False)
class _Lease:
    """One stage run's lease: what to renew, and how often."""

    deps: Deps
    job_id: str
    stage: Stage
    epoch: int

    @property
    def every_s(self) -> float:
        return self.deps.settings.stage_lease_renew_s

    def renew(self) -> bool:
        """Renew once; False when this lease needs no more renewals (superseded)."""
        log = get_logger(job_id=self.job_id, stage=self.stage.value, epoch=self.epoch)
        try:
            if not renew_once(self.deps, self.job_id, self.stage, self.epoch):
                log.warning("lease_renewal_refused")  # superseded: the new holder owns it
                return False
        except Exception:
            log.exception("lease_renewal_failed")  # tried again at the next beat
        return True


class _Renewer:
    """The process's lease renewals: a schedule of due times and one daemon thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._schedule: list[tuple[float, int, _Lease]] = []  # (due, order, lease) heap
        self._held: set[_Lease] = set()
        self._renewing: _Lease | None = None
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, lease: _Lease) -> None:
        with self._cond:
            self._held.add(lease)
            self._schedule_next(lease)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, lease: _Lease) -> None:
        """Stop renewing `lease`, after a renewal of it already running (as long as a beat)."""
        with self._cond:
            self._held.discard(lease)
            self._cond.wait_for(lambda: self._renewing is not lease, timeout=lease.every_s)

    def _schedule_next(self, lease: _Lease) -> None:
        heapq.heappush(self._schedule, (time.monotonic() + lease.every_s, next(self._order), lease))

    def _run(self) -> None:
        while True:
            with self._cond:
                lease = self._next_due()
                self._renewing = lease
            keep = lease.renew()
            with self._cond:
                self._renewing = None
                if keep and lease in self._held:
                    self._schedule_next(lease)
                self._cond.notify_all()

    def _next_due(self) -> _Lease:
        """Wait (holding the condition) until a held lease is due; take it off the schedule."""
        while True:
            while self._schedule and self._schedule[0][2] not in self._held:
                heapq.heappop(self._schedule)  # ended before it was due
            if not self._schedule:
                self._cond.wait()
                continue
            due = self._schedule[0][0] - time.monotonic()
            if due <= 0:
                return heapq.heappop(self._schedule)[2]
            self._cond.wait(due)


_RENEWER = _Renewer()


@contextmanager
def heartbeat(deps: Deps, job_id: str, stage: Stage, epoch: int) -> Iterator[None]:
    """Renew the job's lease in the background for as long as the block runs."""
    lease = _Lease(deps, job_id, stage, epoch)
    _RENEWER.add(lease)
    try:
        yield
    finally:
        _RENEWER.remove(lease)
