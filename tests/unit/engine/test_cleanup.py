"""Cleanup past retention removes every key an ended job wrote, on every backend.

Each test runs a job to a terminal state through the real hand-off, notify stage and
maintenance, enumerates every key it wrote in every dict, and checks what `cleanup`
leaves. A live job beside it keeps all of its keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.core.config import Settings
from app.core.errors import ComfyUnavailable, RenderFailed
from app.core.models import Job, JobStatus, Stage
from app.engine.deps import Deps
from app.engine.maintenance import cleanup, sweep
from app.engine.pipeline import StageFn, cancel_job, enqueue, process_message
from app.stages import notify
from app.store import keys
from app.store.backends.base import Backend
from app.store.backends.memory import MemoryBackend
from app.store.backends.modal import ModalBackend
from app.store.backends.sqlite import SqliteBackend
from app.store.jobs import Limits
from app.store.tenants import Tenant
from tests.modal_fake import FakeModal
from tests.state_helpers import FakeClock, new_job

HOOK = "https://hooks.example.com/done"
#: Dicts a job can write to, the tenants dict too (a job must never write there).
DICTS = (*keys.JOB_DICTS, keys.TENANTS_DICT)


def _memory(tmp_path: Path) -> Backend:
    return MemoryBackend()


def _sqlite(tmp_path: Path) -> Backend:
    return SqliteBackend(tmp_path / "state.db")


def _modal(tmp_path: Path) -> Backend:
    fake = FakeModal()
    return ModalBackend(
        "test", queue_factory=fake.queue_from_name, dict_factory=fake.dict_from_name
    )


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "modal": _modal,
}


@dataclass
class _Answer:
    status_code: int
    retry_after_s: float | None = None


class _Receiver:
    """A webhook receiver answering every post with `status`."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.posts = 0

    def post(self, url: str, body: bytes, headers: object, *, timeout_s: float) -> _Answer:
        self.posts += 1
        return _Answer(self.status)


@pytest.fixture(params=sorted(BACKENDS))
def deps(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deps]:
    settings = Settings(
        data_dir=tmp_path / "data",
        stage_lease_s=100,
        stage_max_attempts=3,
        # Longer than the job retention, so only the purge of the job can remove its record
        # (the window itself is capped at 6 days: Modal Dict's 7-day idle expiry).
        job_retention_s=2 * 86_400,
        idempotency_ttl_s=6 * 86_400,
    )
    backend = BACKENDS[request.param](tmp_path)
    made = Deps(settings=settings, backend=backend, clock=FakeClock())
    made.__dict__["http"] = _Receiver(200)  # the cached_property's slot
    yield made
    backend.close()


def clock_of(deps: Deps) -> FakeClock:
    clock = deps.clock
    assert isinstance(clock, FakeClock)
    return clock


def all_keys(deps: Deps) -> set[tuple[str, str]]:
    """Every key of the fixed dicts and of the retention hours from the clock's start on."""
    first = keys.retention_bucket(FakeClock().now)
    hours = [
        keys.retention_hour_dict(b)
        for b in range(first, keys.retention_bucket(clock_of(deps).now) + 1)
    ]
    return {(name, key) for name in (*DICTS, *hours) for key in deps.backend.kv(name).keys()}


def shared(name: str, key: str) -> bool:
    """Keys owned by a user, a scope or a tenant, not by any one job."""
    if name in (keys.ADMISSION_DICT, keys.RATES_DICT) and key.startswith(
        (keys.INDEX_PREFIX, keys.RATE_PREFIX)
    ):
        return keys.parse_sequence_key(key) is None  # a sequence's search hint
    if name == keys.RETENTION_DICT:  # cleanup's cursor
        return key == keys.RETENTION_CURSOR_KEY
    if name == keys.SLOTS_DICT:
        return key.startswith((keys.SLOT_HINTS_PREFIX, keys.SLOT_FLOOR_PREFIX))
    return False


def ok(job: Job, deps: Deps) -> Job:
    return job


def drain(deps: Deps, fns: dict[Stage, StageFn]) -> None:
    """Run every queued message, work stages and notify, until all queues are empty."""
    moved = True
    while moved:
        moved = False
        for stage in (Stage.FETCH, Stage.RENDER, Stage.UPLOAD, Stage.NOTIFY):
            while (raw := deps.queue(stage).get()) is not None:
                moved = True
                process_message(raw, deps, {**fns, Stage.NOTIFY: notify.run})


def tenant(deps: Deps) -> Tenant:
    return deps.tenants.create("acme").tenant


def admit(deps: Deps, owner: Tenant, job_id: str, webhook: bool, queue: bool = True) -> None:
    hook = {"webhook_url": HOOK} if webhook else {}
    new = new_job(tenant=owner.id, user="u1", idempotency_key=f"idem-{job_id}", **hook)
    deps.jobs.create(new, job_id, Limits(max_active_per_tenant=10))
    if queue:
        enqueue(deps, job_id, Stage.FETCH)


def _transient_then_permanent() -> Callable[[Job, Deps], Job]:
    calls: list[int] = []

    def render(job: Job, deps: Deps) -> Job:
        calls.append(1)
        if len(calls) == 1:
            raise ComfyUnavailable("comfy restarting")
        raise RenderFailed("sizes differ")

    return render


def finish(deps: Deps, job_id: str, status: JobStatus) -> None:
    """Drive the job to `status`; failing goes through a stage retry (a parked message)."""
    fns: dict[Stage, StageFn] = {Stage.FETCH: ok, Stage.RENDER: ok, Stage.UPLOAD: ok}
    if status is JobStatus.CANCELLED:
        cancel_job(deps, job_id)  # its fetch message is still queued
    elif status is JobStatus.FAILED:
        fns[Stage.RENDER] = _transient_then_permanent()
    for _ in range(4):
        drain(deps, fns)
        clock_of(deps).advance(30)
        sweep(deps)
    drain(deps, fns)
    assert deps.jobs.get(job_id).status is status


def past_retention(deps: Deps) -> None:
    clock_of(deps).advance(deps.settings.job_retention_s + 1)


def test_cleanup_removes_the_webhook_delivery_record(deps: Deps) -> None:
    owner = tenant(deps)
    admit(deps, owner, "j1", webhook=True)
    finish(deps, "j1", JobStatus.COMPLETED)
    deliveries = deps.backend.kv(keys.DELIVERIES_DICT)
    assert deliveries.contains(keys.delivery_key("j1"))
    past_retention(deps)
    assert cleanup(deps)["jobs_deleted"] == 1
    assert not deliveries.contains(keys.delivery_key("j1"))


def test_cleanup_removes_the_user_index_entry_and_the_idempotency_record(deps: Deps) -> None:
    owner = tenant(deps)
    admit(deps, owner, "j1", webhook=False)
    finish(deps, "j1", JobStatus.COMPLETED)
    admission = deps.backend.kv(keys.ADMISSION_DICT)
    idem = deps.backend.kv(keys.IDEM_DICT)
    index = keys.index_prefix(owner.id, "u1")
    assert admission.get(keys.sequence_key(index, 0)) == "j1"
    assert idem.contains(keys.idem_key(owner.id, "u1", "idem-j1"))
    past_retention(deps)
    cleanup(deps)
    assert not admission.contains(keys.sequence_key(index, 0))
    assert not idem.contains(keys.idem_key(owner.id, "u1", "idem-j1"))
    assert deps.jobs.list_for_user(owner.id, "u1").jobs == []


CASES = [
    (status, webhook)
    for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
    for webhook in (False, True)
]


@pytest.mark.parametrize(("status", "webhook"), CASES, ids=lambda v: str(v).lower())
def test_cleanup_past_retention_leaves_none_of_an_ended_jobs_keys(
    deps: Deps, status: JobStatus, webhook: bool
) -> None:
    owner = tenant(deps)
    # The same user and tenant, admitted and never run.
    admit(deps, owner, "live", webhook=True, queue=False)
    live = {(n, k) for n, k in all_keys(deps) if n != keys.TENANTS_DICT and not shared(n, k)}
    before = all_keys(deps)
    if status is JobStatus.FAILED and webhook:
        deps.__dict__["http"] = _Receiver(503)  # its delivery stays pending, a retry parked
    admit(deps, owner, "j1", webhook=webhook)
    finish(deps, "j1", status)
    wrote = {(n, k) for n, k in all_keys(deps) - before if not shared(n, k)}
    written_to = {name for name, _ in wrote}
    assert {keys.JOBS_DICT, keys.ADMISSION_DICT, keys.SLOTS_DICT} <= written_to
    assert keys.retention_hour_dict(keys.retention_bucket(clock_of(deps).now)) in written_to
    assert (keys.DELIVERIES_DICT in written_to) is webhook
    assert keys.TENANTS_DICT not in written_to

    clock_of(deps).advance(deps.settings.job_retention_s - 3600)
    assert cleanup(deps)["jobs_deleted"] == 0  # not yet past retention
    assert wrote <= all_keys(deps)

    clock_of(deps).advance(3600 + 1)
    report = cleanup(deps)
    assert report["jobs_deleted"] == 1
    left = all_keys(deps)
    assert not wrote & left, sorted(wrote & left)
    assert live <= left, sorted(live - left)
    assert deps.jobs.find("j1") is None
    assert deps.jobs.find("live") is not None


def test_a_cleanup_run_purges_at_most_its_limit_and_the_next_run_resumes(deps: Deps) -> None:
    deps.settings = deps.settings.model_copy(update={"cleanup_max_jobs_per_run": 2})
    owner = tenant(deps)
    for n in range(5):
        admit(deps, owner, f"j{n}", webhook=False)
        finish(deps, f"j{n}", JobStatus.COMPLETED)
    past_retention(deps)
    # One run's work is bounded (a run must end inside its function timeout); hourly
    # runs take the rest in turn, none purged twice.
    assert [cleanup(deps)["jobs_deleted"] for _ in range(4)] == [2, 2, 1, 0]
    assert all(deps.jobs.find(f"j{n}") is None for n in range(5))
