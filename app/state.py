"""The job state core's entry point: job records, terminal decisions, strict admission.

The implementation lives in `app.store` (the only layer that knows stored key formats);
this module is the stable name the rest of the code and the tests import it by.
"""

from __future__ import annotations

from app.core.errors import AdmissionRejected, AlreadyTerminal, IdempotencyConflict, JobNotFound
from app.store.jobs import (
    Admission,
    JobStore,
    Limits,
    NewJob,
    Page,
    ReconcileReport,
    body_fingerprint,
)
from app.store.keys import tenant_scope, user_scope

__all__ = [
    "Admission",
    "AdmissionRejected",
    "AlreadyTerminal",
    "IdempotencyConflict",
    "JobNotFound",
    "JobStore",
    "Limits",
    "NewJob",
    "Page",
    "ReconcileReport",
    "body_fingerprint",
    "tenant_scope",
    "user_scope",
]
