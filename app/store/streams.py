"""Open event streams per tenant: leased places, counted across ingress processes.

A tenant has `cap` places. A stream holds place `i` through the key
`stream:{tenant}:{i}:{g}` (value: its token and the end of its lease), taken with
put-if-absent, so two streams never hold one tenure. The holder renews the lease while
it streams and pops the key when it ends. A holder that died stops renewing: once its
lease is over, the next claimer takes generation `g + 1` of that place (put-if-absent
again, so one claimer wins) and deletes the dead tenure. No count can leak for longer
than one lease, and nothing but put-if-absent is needed (Modal's dict).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from app.store.backends.base import KV
from app.store.keys import parse_stream_key, stream_key, stream_prefix


@dataclass(slots=True)
class StreamLease:
    """One held place: renew it while streaming, release it at the end."""

    kv: KV
    key: str
    token: str
    clock: Callable[[], float]
    lease_s: float

    def renew(self) -> bool:
        """Extend the lease; False if the place was taken over (the stream should end)."""
        current = _read(self.kv.get(self.key))
        if current is None or current[0] != self.token:
            return False
        self.kv.put(self.key, _value(self.token, self.clock() + self.lease_s))
        return True

    def release(self) -> None:
        """Give the place back (only while it is still ours)."""
        current = _read(self.kv.get(self.key))
        if current is not None and current[0] == self.token:
            self.kv.pop(self.key)


def acquire(
    kv: KV, tenant_id: str, cap: int, lease_s: float, clock: Callable[[], float]
) -> StreamLease | None:
    """A place for one more stream of the tenant, or None when all `cap` are held."""
    now = clock()
    held: dict[int, tuple[int, str, float]] = {}  # place -> generation, key, until
    for key in list(kv.keys(stream_prefix(tenant_id))):
        place, generation = parse_stream_key(key)
        value = _read(kv.get(key))
        if value is None:
            continue  # released between the listing and the read
        if place not in held or generation > held[place][0]:
            held[place] = (generation, key, value[1])
    token = uuid.uuid4().hex
    for place in range(cap):
        tenure = held.get(place)
        if tenure is not None and tenure[2] >= now:
            continue
        generation = 0 if tenure is None else tenure[0] + 1
        key = stream_key(tenant_id, place, generation)
        if kv.put_if_absent(key, _value(token, now + lease_s)):
            if tenure is not None:
                kv.pop(tenure[1])  # the dead holder's tenure: ours now
            return StreamLease(kv, key, token, clock, lease_s)
    return None


def _value(token: str, until: float) -> str:
    return json.dumps({"token": token, "until": until})


def _read(raw: str | None) -> tuple[str, float] | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return str(data["token"]), float(data["until"])
