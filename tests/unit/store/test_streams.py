"""Stream places: at most `cap` per tenant, freed on release or when a lease runs out."""

from __future__ import annotations

from app.store.backends.memory import MemoryBackend
from app.store.streams import acquire
from tests.state_helpers import FakeClock


def test_places_are_bounded_released_and_taken_over_after_the_lease() -> None:
    kv, clock = MemoryBackend().kv("streams"), FakeClock()
    one = acquire(kv, "t1", 2, 60, clock)
    two = acquire(kv, "t1", 2, 60, clock)
    assert one is not None and two is not None
    assert acquire(kv, "t1", 2, 60, clock) is None
    assert acquire(kv, "t2", 2, 60, clock) is not None  # per tenant
    one.release()
    three = acquire(kv, "t1", 2, 60, clock)
    assert three is not None
    # `two` dies without releasing; `three` keeps renewing.
    clock.advance(45)
    assert three.renew()
    clock.advance(30)
    four = acquire(kv, "t1", 2, 60, clock)
    assert four is not None  # took over the dead stream's place
    assert not two.renew()  # the dead one, were it alive, learns it lost its place
    assert acquire(kv, "t1", 2, 60, clock) is None
    assert len(list(kv.keys("stream:t1:"))) == 2  # the dead tenure was deleted
