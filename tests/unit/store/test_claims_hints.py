"""Slot hints only speed up the search: a missing or stale hint costs probes, never a
wrong answer. These kill the mutants that survived in `claim_slot`'s probe loop."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from app.store.backends.memory import MemoryKV
from app.store.claims import (
    SlotHints,
    SlotHolder,
    active_count,
    claim_slot,
    read_hints,
    release_slot,
)
from app.store.keys import slot_hints_key


def forget_hints(kv: MemoryKV, scope: str) -> None:
    """What a lost or stale hint record looks like to the next claimer: no hint at all."""
    kv.pop(slot_hints_key(scope))


def test_without_hints_a_held_place_is_skipped_for_a_free_one() -> None:
    kv = MemoryKV()
    first = claim_slot(kv, "s", 2, SlotHolder("a", 0))
    assert first is not None and first.index == 0
    forget_hints(kv, "s")
    second = claim_slot(kv, "s", 2, SlotHolder("b", 0))
    # Place 0 is probed first (no hint says it is held), found held, and place 1 is taken
    assert second is not None and second.index == 1
    assert active_count(kv, "s") == 2
    assert claim_slot(kv, "s", 2, SlotHolder("c", 0)) is None


def test_without_hints_released_generations_are_walked_to_the_next_free_one() -> None:
    kv = MemoryKV()
    for round_ in range(3):  # place 0 held and released three times: generations 0, 1, 2
        ref = claim_slot(kv, "s", 1, SlotHolder(f"j{round_}", 0))
        assert ref is not None and ref.generation == round_
        assert release_slot(kv, ref)
    forget_hints(kv, "s")
    ref = claim_slot(kv, "s", 1, SlotHolder("next", 0))
    # The claimer probes generation 0, 1, 2 (each released) and wins 3, the next one
    assert ref is not None and (ref.index, ref.generation) == (0, 3)
    assert active_count(kv, "s") == 1
    assert claim_slot(kv, "s", 1, SlotHolder("over", 0)) is None


class CountingKV(MemoryKV):
    """Counts put-if-absent probes (each is a round trip on Modal, a write on SQLite) and
    batched reads (`read_many`: one query on SQLite)."""

    def __init__(self) -> None:
        super().__init__()
        self.probes = 0
        self.batched_reads = 0

    def put_if_absent(self, key: str, value: str) -> bool:
        self.probes += 1
        return super().put_if_absent(key, value)

    def read_many(self, keys: Sequence[str]) -> list[str | None]:
        self.batched_reads += 1
        return super().read_many(keys)


class OneByOneKV(CountingKV):
    """A dict without batched reads, like Modal's: every place is probed by itself."""

    read_many = None  # type: ignore[assignment]


@pytest.mark.parametrize(("kind", "first_probes"), [(OneByOneKV, 51), (CountingKV, 3)])
def test_held_places_found_by_probing_go_into_the_hints_written_back(
    kind: type[CountingKV], first_probes: int
) -> None:
    # Concurrent admissions overwrite each other's hint record, so a claimer often finds
    # places held that its hints called free. It writes what it found back: the next
    # claimer skips them instead of probing every one again. Where the dict reads many
    # keys in one query, the held places past the first two are found by one read.
    kv = kind()
    for n in range(50):
        assert claim_slot(kv, "s", 1000, SlotHolder(f"a{n}", 0)) is not None
    forget_hints(kv, "s")  # what the last of many overwritten hint writes looks like
    kv.probes = 0
    assert claim_slot(kv, "s", 1000, SlotHolder("b", 0)) is not None
    assert kv.probes == first_probes  # the 50 held places, found the hard way once
    kv.probes = 0
    ref = claim_slot(kv, "s", 1000, SlotHolder("c", 0))
    assert ref is not None and ref.index == 51
    assert kv.probes == 1


def test_a_refusal_at_a_full_cap_screens_the_places_in_batches_and_stays_exact() -> None:
    kv = CountingKV()
    refs = [claim_slot(kv, "s", 500, SlotHolder(f"a{n}", 0)) for n in range(500)]
    assert all(ref is not None for ref in refs)
    forget_hints(kv, "s")  # the worst case: every place must be looked at
    kv.probes = kv.batched_reads = 0
    assert claim_slot(kv, "s", 500, SlotHolder("over", 0)) is None
    # Two places probed one by one, the other 498 read in two batches (was 500 probes
    # and 500 marker reads).
    assert (kv.probes, kv.batched_reads) == (2, 2)
    assert active_count(kv, "s") == 500
    # A place released since is found by the screen and won by put-if-absent at its
    # next generation; the cap still holds after it.
    freed = refs[321]
    assert freed is not None and release_slot(kv, freed)
    forget_hints(kv, "s")
    ref = claim_slot(kv, "s", 500, SlotHolder("next", 0))
    assert ref is not None and (ref.index, ref.generation) == (321, freed.generation + 1)
    assert claim_slot(kv, "s", 500, SlotHolder("over", 0)) is None
    assert active_count(kv, "s") == 500


def test_the_screen_never_hands_out_a_held_place() -> None:
    # A dict whose batched read says every key is absent (a screen gone wrong) still
    # cannot over-admit: each place it lets through must be won by put-if-absent.
    class BlindKV(CountingKV):
        def read_many(self, keys: Sequence[str]) -> list[str | None]:
            return [None] * len(keys)

    kv = BlindKV()
    for n in range(10):
        assert claim_slot(kv, "s", 10, SlotHolder(f"a{n}", 0)) is not None
    forget_hints(kv, "s")
    assert claim_slot(kv, "s", 10, SlotHolder("over", 0)) is None
    assert active_count(kv, "s") == 10


def test_dense_hints_are_written_as_a_list_and_read_back_the_same() -> None:
    hints = SlotHints({0: 3, 1: 0, 2: 7, 4: 1}, {0, 2}, seq={"idx": 12})
    record = json.loads(hints.dumps())
    assert record["g"] == [3, 0, 7, 0, 1]  # place 3 has no hint: 0, as if absent
    assert "gen" not in record
    kv = MemoryKV()
    kv.put(slot_hints_key("s"), hints.dumps())
    back = read_hints(kv, "s")
    assert {i: back.generations.get(i, 0) for i in range(6)} == {
        0: 3,
        1: 0,
        2: 7,
        3: 0,
        4: 1,
        5: 0,
    }
    assert back.held == {0, 2} and back.seq == {"idx": 12} and back.found


def test_sparse_or_stamped_hints_keep_the_dict_and_old_records_still_read() -> None:
    sparse = json.loads(SlotHints({0: 1, 500: 2}, set()).dumps())
    assert sparse["gen"] == {"0": 1, "500": 2} and "g" not in sparse
    stamped = json.loads(SlotHints({0: 1}, {0}, seen_at={0: 5.0}, stamped=True).dumps())
    assert stamped["gen"] == {"0": 1} and stamped["at"] == {"0": 5}
    kv = MemoryKV()
    # A record as written before the list form: still a valid hint.
    kv.put(slot_hints_key("s"), json.dumps({"gen": {"0": 4, "2": 1}, "held": [2]}))
    old = read_hints(kv, "s")
    assert old.generations == {0: 4, 2: 1} and old.held == {2}
    ref = claim_slot(kv, "s", 3, SlotHolder("a", 0))
    assert ref is not None and (ref.index, ref.generation) == (0, 4)
