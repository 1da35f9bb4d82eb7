"""Factories for state tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from app.store.backends.base import KV, Backend
from app.store.backends.memory import MemoryBackend, MemoryKV
from app.store.jobs import JobStore, Limits, NewJob

WORKFLOW: dict[str, object] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_job(tenant: str = "t1", user: str = "u1", **overrides: object) -> NewJob:
    values: dict[str, object] = {
        "tenant_id": tenant,
        "user_id": user,
        "workflow": WORKFLOW,
        "timeout_s": 600,
    }
    values.update(overrides)
    return NewJob(**values)  # type: ignore[arg-type]


_ids: Iterator[int] = itertools.count()


def job_id() -> str:
    return f"job-{next(_ids):06d}"


class CountingKV:
    """Wraps a KV and counts reads, to prove an operation does not scan."""

    def __init__(self, inner: KV) -> None:
        self.inner = inner
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        attr = getattr(self.inner, name)
        if name in ("get", "contains", "keys", "read_many"):  # a batched read: one query

            def counted(*args: object, **kwargs: object) -> object:
                self.reads += 1
                return attr(*args, **kwargs)

            return counted
        return attr


def memory_store(
    clock: FakeClock | None = None, hint_trust_s: float = 0.0
) -> tuple[JobStore, MemoryBackend, FakeClock]:
    backend = MemoryBackend()
    clock = clock or FakeClock()
    return JobStore(backend, clock, hint_trust_s=hint_trust_s), backend, clock


def limits(**overrides: int) -> Limits:
    return Limits(**overrides)


def kv_of(backend: Backend, name: str) -> MemoryKV:
    kv = backend.kv(name)
    assert isinstance(kv, MemoryKV)
    return kv
