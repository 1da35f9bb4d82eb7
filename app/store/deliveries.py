"""A job's webhook delivery record and its attempt log, stored in the `deliveries` dict."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.core.models import DeliveryAttempt, Record
from app.store.backends.base import Backend
from app.store.keys import DELIVERIES_DICT, delivery_key

DeliveryState = Literal["pending", "delivered", "dead"]


class Delivery(Record):
    """A job's webhook delivery and its log (no URL secrets, no signatures)."""

    job_id: str
    msg_id: str
    event_type: str
    body: str  #: the exact bytes signed and sent on every attempt
    state: DeliveryState = "pending"
    attempts: list[DeliveryAttempt] = Field(default_factory=list)
    next_attempt_at: float | None = None
    #: Raised by fail_stale when it re-sends a lost message (a fencing token).
    epoch: int = 0


def load_delivery(backend: Backend, job_id: str) -> Delivery | None:
    """A job's delivery record, if a delivery was started."""
    raw = backend.kv(DELIVERIES_DICT).get(delivery_key(job_id))
    return None if raw is None else Delivery.model_validate_json(raw)
