"""Purging a released slot tenure never lets a claimer take its place twice."""

from __future__ import annotations

from app.core.models import SlotRef
from app.store import keys
from app.store.backends.memory import MemoryKV
from app.store.claims import SlotHolder, active_count, claim_slot, purge_slot, release_slot


def test_a_stale_hint_cannot_reclaim_a_purged_generation() -> None:
    kv = MemoryKV()
    first = claim_slot(kv, "s", 1, SlotHolder("a", 0.0))
    assert first == SlotRef(scope="s", index=0, generation=0)
    stale = kv.get(keys.slot_hints_key("s"))
    release_slot(kv, first)
    assert claim_slot(kv, "s", 1, SlotHolder("b", 1.0)) is not None  # generation 1, held
    assert purge_slot(kv, first) == 2
    assert not kv.contains(keys.slot_key("s", 0, 0))
    kv.put(keys.slot_hints_key("s"), stale or "")  # a slow claimer's old view, written back
    assert claim_slot(kv, "s", 1, SlotHolder("c", 2.0)) is None
    assert active_count(kv, "s") == 1


def test_the_place_is_free_again_after_its_holder_is_released() -> None:
    kv = MemoryKV()
    first = claim_slot(kv, "s", 1, SlotHolder("a", 0.0))
    assert first is not None
    release_slot(kv, first)
    purge_slot(kv, first)
    kv.pop(keys.slot_hints_key("s"))  # no hint at all: the search starts at generation 0
    again = claim_slot(kv, "s", 1, SlotHolder("b", 1.0))
    assert again == SlotRef(scope="s", index=0, generation=1)


def test_a_held_tenure_is_never_purged() -> None:
    kv = MemoryKV()
    held = claim_slot(kv, "s", 1, SlotHolder("a", 0.0))
    assert held is not None
    assert purge_slot(kv, held) == 0
    assert active_count(kv, "s") == 1
