"""Maintenance on the emulated Modal Dict costs round trips per job in flight or due,
never per job in the history (a `keys()` scan streams a whole Modal Dict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.adapters.storage.memory import MemoryStore
from app.core.config import Settings
from app.core.models import JobStatus
from app.engine.deps import Deps
from app.engine.maintenance import cleanup, fail_stale
from app.store.backends.modal import ModalBackend
from app.store.jobs import Limits
from tests.modal_emulator import ModalEmulator
from tests.state_helpers import new_job

RETENTION_S = 86_400


def maintenance_rpcs(tmp_path: Path, history: int) -> dict[str, int]:
    """RPCs of one fail_stale and two cleanups (one with nothing due, one with 5 jobs
    due) after `history` jobs ended more than a retention ago and were cleaned up."""
    emu = ModalEmulator(mode="manual", latency_s=0.0)
    with emu.install():
        settings = Settings(data_dir=tmp_path / f"h{history}", job_retention_s=RETENTION_S)
        deps = Deps(settings=settings, backend=ModalBackend("cost"), clock=emu.clock.now)
        deps.objects = MemoryStore(clock=emu.clock.now)
        tenant = deps.tenants.create("acme").tenant
        limits = Limits(max_active_per_user=5, max_active_per_tenant=100)

        def admit(job_id: str) -> None:
            user = f"u{len(job_id) % 7}-{job_id}"
            new = new_job(tenant=tenant.id, user=user, idempotency_key=f"k-{job_id}")
            deps.jobs.create(new, job_id, limits)

        for n in range(history):
            admit(f"old{n}")
            deps.jobs.finish(f"old{n}", JobStatus.COMPLETED)
        emu.clock.advance(RETENTION_S + 3600)
        cleanup(deps)  # the history is purged; their slot tenures stay behind as history
        for n in range(5):
            admit(f"due{n}")
            deps.jobs.finish(f"due{n}", JobStatus.COMPLETED)
        for n in range(3):
            admit(f"live{n}")
        counts: dict[str, int] = {}
        with emu.ledger.step("fail_stale"):
            fail_stale(deps)
        with emu.ledger.step("cleanup_idle"):
            cleanup(deps)
        emu.clock.advance(RETENTION_S + 3600)
        with emu.ledger.step("cleanup_due"):
            report = cleanup(deps)
        assert report["jobs_deleted"] == 5
        for step in ("fail_stale", "cleanup_idle", "cleanup_due"):
            counts[step] = emu.ledger.count(step=step)
    emu.close()
    return counts


@pytest.mark.parametrize("step", ["fail_stale", "cleanup_idle", "cleanup_due"])
def test_maintenance_round_trips_do_not_grow_with_history(tmp_path: Path, step: str) -> None:
    small = maintenance_rpcs(tmp_path, history=20)
    large = maintenance_rpcs(tmp_path, history=400)
    assert large[step] == small[step], (small, large)


def test_the_idempotency_sweep_streams_records_a_page_at_a_time(tmp_path: Path) -> None:
    # Cleanup runs hourly over a day's idempotency records (10,000 at 2,000 daily
    # users): one round trip per page of 100, not a get per record.
    emu = ModalEmulator(mode="manual", latency_s=0.0)
    with emu.install():
        settings = Settings(data_dir=tmp_path / "idem", job_retention_s=RETENTION_S)
        deps = Deps(settings=settings, backend=ModalBackend("idem"), clock=emu.clock.now)
        deps.objects = MemoryStore(clock=emu.clock.now)
        tenant = deps.tenants.create("acme").tenant
        limits = Limits(max_active_per_user=1000)
        for n in range(450):
            new = new_job(tenant=tenant.id, user="u", idempotency_key=f"k-{n}")
            deps.jobs.create(new, f"j{n}", limits)
        with emu.ledger.step("cleanup"):
            cleanup(deps)
        idem = emu.ledger.by_op(step="cleanup")
    emu.close()
    idem_calls = {op: n for (_, name, op), n in idem.items() if name.endswith("-idempotency")}
    assert idem_calls == {"items:page": 5}, idem_calls
