"""Lease renewal while a stage works: a dead holder is noticed in seconds, a slow one never.

The engine wraps every work stage call in `heartbeat(...)`; a daemon thread renews the
job's lease every `stage_lease_renew_s` for `stage_lease_s`, so a long render keeps its
job while a killed worker's lease runs out within one lease and `fail_stale` takes the
job back. A holder that was superseded (a newer epoch) is refused and stops renewing;
its result is dropped by the engine's fencing check.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from app.core.logs import get_logger
from app.core.models import Stage
from app.engine.deps import Deps


def renew_once(deps: Deps, job_id: str, stage: Stage, epoch: int) -> bool:
    """One renewal; False when the holder was superseded (stop renewing)."""
    until = deps.clock() + deps.settings.stage_lease_s
    return deps.jobs.renew_lease(job_id, stage, epoch, until)


def _beat(deps: Deps, job_id: str, stage: Stage, epoch: int, stop: threading.Event) -> None:
    log = get_logger(job_id=job_id, stage=stage.value, epoch=epoch)
    while not stop.wait(deps.settings.stage_lease_renew_s):
        try:
            if not renew_once(deps, job_id, stage, epoch):
                log.warning("lease_renewal_refused")  # superseded: the new holder owns it
                return
        except Exception:
            log.exception("lease_renewal_failed")


@contextmanager
def heartbeat(deps: Deps, job_id: str, stage: Stage, epoch: int) -> Iterator[None]:
    """Renew the job's lease in the background for as long as the block runs."""
    stop = threading.Event()
    thread = threading.Thread(
        target=_beat,
        args=(deps, job_id, stage, epoch, stop),
        name=f"heartbeat-{job_id}",
        daemon=True,  # never keeps a stopping worker alive
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=deps.settings.stage_lease_renew_s)
