"""Pending intakes: a queued request made durable before its message can be lost.

The intake queue's `get` is destructive, so a worker killed between `get` and the job
record lost the request for good. The Python client therefore writes a marker keyed by
the job id (the request and the tenant it authenticated as; never the API key) before
it puts the message; intake clears it once the job record exists (admitted or
rejected), and `fail_stale` re-admits a marker that stayed too long. A re-admitted
message carries no key: intake authenticates it by its marker, which only a
key-holding client could have written. A duplicate is harmless: intake refuses a job id
that already has a record.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from app.core.models import Record
from app.core.schemas import JobRequest
from app.store.backends.base import KV, Backend
from app.store.keys import INTAKE_DICT, intake_key


class PendingIntake(Record):
    """A queued request not yet turned into a job record."""

    job_id: str
    tenant_id: str
    user_id: str
    request: JobRequest
    idempotency_key: str | None = None
    at: float
    #: How many times maintenance put it back on the intake queue.
    resent: int = Field(default=0, ge=0)


class PendingIntakes:
    """The markers, keyed by job id."""

    def __init__(self, backend: Backend) -> None:
        self.kv: KV = backend.kv(INTAKE_DICT)

    def mark(self, pending: PendingIntake) -> None:
        self.kv.put(intake_key(pending.job_id), pending.model_dump_json())

    def get(self, job_id: str) -> PendingIntake | None:
        raw = self.kv.get(intake_key(job_id))
        return None if raw is None else PendingIntake.model_validate_json(raw)

    def clear(self, job_id: str) -> None:
        self.kv.pop(intake_key(job_id))

    def all(self) -> Iterator[PendingIntake]:
        for key in list(self.kv.keys()):
            raw = self.kv.get(key)
            if raw is not None:
                yield PendingIntake.model_validate_json(raw)
