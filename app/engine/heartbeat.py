"""Lease renewal while a stage works: a dead holder is noticed in seconds, a slow one never.

The engine wraps every work stage call in `heartbeat(...)`; a daemon thread renews the
job's lease every `stage_lease_renew_s` for `stage_lease_s`, so a long render keeps its
job while a killed worker's lease runs out within one lease and `fail_stale` takes the
job back. A holder that was superseded (a newer epoch) is refused and stops renewing;
its result is dropped by the engine's fencing check.
"""

from __future__ import annotations

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
class _Held:
    """One lease this process renews: whose, and when next."""

    deps: Deps
    job_id: str
    stage: Stage
    epoch: int
    due: float


class _Beats:
    """One daemon thread per process renews every lease held in it.

    A thread per stage call (started, woken and joined for every job) cost the upload
    worker ~13 % of its CPU under load (py-spy, issue 13); holding a lease here is a dict
    insert. Renewals run one after another on the thread, each `stage_lease_renew_s`
    after the last, far inside the lease (`stage_lease_s`), so one slow renewal does
    not lose another's lease.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: set[_Held] = set()
        self._renewing: _Held | None = None
        self._thread: threading.Thread | None = None
        #: When the thread wakes next: a hold due later needs no wake-up (the steady
        #: state, as every lease is renewed on the same period).
        self._wakes_at = 0.0
        #: How long the thread sleeps with nothing held (the last period it was given).
        self._idle_s = 1.0

    def hold(self, deps: Deps, job_id: str, stage: Stage, epoch: int) -> _Held:
        held = _Held(
            deps, job_id, stage, epoch, time.monotonic() + deps.settings.stage_lease_renew_s
        )
        with self._cond:
            self._held.add(held)
            if self._thread is None or not self._thread.is_alive():
                # Also after a fork: the parent's thread is not this process's.
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()
            elif held.due < self._wakes_at:
                self._cond.notify()  # due before the thread wakes
            self._idle_s = deps.settings.stage_lease_renew_s
        return held

    def release(self, held: _Held) -> None:
        """Stop renewing; a renewal of it in flight finishes first (bounded, as a join was)."""
        with self._cond:
            self._held.discard(held)
            self._cond.wait_for(
                lambda: self._renewing is not held, timeout=held.deps.settings.stage_lease_renew_s
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [h for h in self._held if h.due <= now]
                if not due:
                    soonest = min((h.due for h in self._held), default=now + self._idle_s)
                    self._wakes_at = soonest
                    self._cond.wait(soonest - now)
                    continue
            for held in due:
                self._renew(held)

    def _renew(self, held: _Held) -> None:
        with self._cond:
            if held not in self._held:
                return  # released while others renewed
            self._renewing = held
        log = get_logger(job_id=held.job_id, stage=held.stage.value, epoch=held.epoch)
        keep = True
        try:
            keep = renew_once(held.deps, held.job_id, held.stage, held.epoch)
            if not keep:  # superseded: the new holder owns it
                log.warning("lease_renewal_refused")
        except Exception:
            log.exception("lease_renewal_failed")
        finally:
            with self._cond:
                self._renewing = None
                held.due = time.monotonic() + held.deps.settings.stage_lease_renew_s
                if not keep:
                    self._held.discard(held)
                self._cond.notify_all()


_beats = _Beats()


@contextmanager
def heartbeat(deps: Deps, job_id: str, stage: Stage, epoch: int) -> Iterator[None]:
    """Renew the job's lease in the background for as long as the block runs."""
    held = _beats.hold(deps, job_id, stage, epoch)
    try:
        yield
    finally:
        _beats.release(held)
