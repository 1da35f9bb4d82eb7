"""Webhook deliveries: each job's delivery record and attempt log, and the pending set.

A job with a webhook is marked pending when it ends (before its notify message goes out,
so a lost message is found and re-sent) and settled when its delivery ends `delivered`
or `dead`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.core.models import DeliveryAttempt, Record
from app.store.backends.base import KV, Backend
from app.store.keys import (
    DEAD_DICT,
    DELIVERIES_DICT,
    PENDING_DICT,
    dead_key,
    dead_prefix,
    delivery_key,
    inflight_key,
    inflight_prefix,
    parse_dead_key,
    pending_key,
)

DeliveryState = Literal["pending", "delivered", "dead"]


class Delivery(Record):
    """A job's webhook delivery and its log (no URL secrets, no signatures)."""

    job_id: str
    msg_id: str
    event_type: str
    #: The event as sent, less its outputs' URLs (signed afresh at each attempt).
    body: str
    state: DeliveryState = "pending"
    attempts: list[DeliveryAttempt] = Field(default_factory=list)
    next_attempt_at: float | None = None
    #: Raised by fail_stale when it re-sends a lost message (a fencing token).
    epoch: int = 0


def load_delivery(backend: Backend, job_id: str) -> Delivery | None:
    """A job's delivery record, if a delivery was started."""
    return DeliveryStore(backend).get(job_id)


class DeliveryStore:
    """Delivery records (`deliveries`) and the jobs whose delivery is pending."""

    def __init__(self, backend: Backend) -> None:
        self.records: KV = backend.kv(DELIVERIES_DICT)
        self.pending: KV = backend.kv(PENDING_DICT)
        self.dead: KV = backend.kv(DEAD_DICT)

    def get(self, job_id: str) -> Delivery | None:
        """The job's delivery record, if a delivery was started."""
        raw = self.records.get(delivery_key(job_id))
        return None if raw is None else Delivery.model_validate_json(raw)

    def open(self, fresh: Delivery) -> Delivery:
        """The job's record, storing `fresh` first if it has none (the first write wins)."""
        self.records.put_if_absent(delivery_key(fresh.job_id), fresh.model_dump_json())
        return self.get(fresh.job_id) or fresh

    def save(self, delivery: Delivery) -> None:
        self.records.put(delivery_key(delivery.job_id), delivery.model_dump_json())

    def mark_in_flight(self, job_id: str, msg_id: str, until: float) -> None:
        """A non-terminal event of the job is being posted, until `until` at the latest."""
        self.records.put(inflight_key(job_id, msg_id), str(until))

    def clear_in_flight(self, job_id: str, msg_id: str) -> None:
        self.records.pop(inflight_key(job_id, msg_id))

    def in_flight_until(self, job_id: str, now: float) -> float | None:
        """When the job's last event post still in flight ends at the latest; None if none.

        Marks past their end are of senders that died mid-post: they are removed.
        """
        latest: float | None = None
        for key in self.records.keys(inflight_prefix(job_id)):
            until = float(self.records.get(key) or 0)
            if until <= now:
                self.records.pop(key)
            else:
                latest = until if latest is None else max(latest, until)
        return latest

    def mark_pending(self, job_id: str, since: float) -> None:
        """Note that `job_id` has a delivery to make (found by the sweep if its message is lost)."""
        self.pending.put(pending_key(job_id), str(since))

    def settle(self, job_id: str) -> None:
        """The delivery has ended (`delivered` or `dead`): nothing is pending any more."""
        self.pending.pop(pending_key(job_id))

    def mark_dead(self, tenant_id: str, job_id: str, at: float) -> None:
        """List the delivery among the tenant's failed ones (until it is re-sent)."""
        self.dead.put(dead_key(tenant_id, job_id), str(at))

    def failed_for(self, tenant_id: str, limit: int = 100) -> list[Delivery]:
        """The tenant's dead deliveries, newest first."""
        entries = sorted(
            (
                (float(self.dead.get(key) or 0), parse_dead_key(key))
                for key in self.dead.keys(dead_prefix(tenant_id))
            ),
            reverse=True,
        )
        found = (self.get(job_id) for _, job_id in entries[:limit])
        return [d for d in found if d is not None and d.state == "dead"]

    def reopen(self, tenant_id: str, job_id: str, now: float) -> Delivery | None:
        """Make a dead delivery pending again, same webhook-id and body; None unless dead.

        The re-send is one more attempt in the same log; if it fails the delivery is dead
        again (and can be re-sent again).
        """
        delivery = self.get(job_id)
        if delivery is None or delivery.state != "dead":
            return None
        reopened = delivery.model_copy(update={"state": "pending", "next_attempt_at": now})
        self.mark_pending(job_id, now)
        self.save(reopened)
        self.dead.pop(dead_key(tenant_id, job_id))
        return reopened
