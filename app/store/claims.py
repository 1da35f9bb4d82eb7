"""Counting with nothing but put-if-absent.

Modal's dict has no increment and no compare-and-set, so every limit here is a set of
keys that can each be created exactly once:

* **Sequences** (`claim_next`): claim the lowest free integer under a prefix. With a
  bound, at most `limit` claims ever succeed; this is the rate-limit window and the
  per-user job index.
* **Slots** (`claim_slot` / `release_slot`): a concurrency cap of `cap` places. Place
  `i` is held through a *generation* key `slot:{scope}:{i}:{g}`; releasing writes a
  `released` marker for exactly that generation, and the next claimer moves on to
  `g + 1`. A release therefore names one tenure of one place: repeating it, or running it
  late after someone else holds the place, can never free the newer holder. That is what
  lets the reaper and a slow worker both release without coordination.

Cleanup deletes a tenure's two keys long after its release (`purge_slot`). A deleted
generation would look free to a claimer whose hint is older than the deletion, so the
purge first raises the place's *floor* (`slotfloor:{scope}:{i}`) past it, and a claimer
that wins a generation below the floor gives it back and moves on to the floor. The win
comes after the deletion, the deletion after the floor was raised, so the claimer's
read of the floor sees it: strict admission holds. Floors only rise while one cleanup
runs at a time (the local runner's loop; one Modal cron), which is all that runs them.

Hints (`...:hint`) are plain writes that only speed up the search; a stale hint costs a
few extra probes and never a wrong answer, because every key below a hint was claimed.

**Trusted hints** spare the floor read (one round trip per scope on every admission,
issue 12). Each place's hint carries when it was observed (`seen_at`): by a claimer that
won or found held that generation (so its release, if any, comes later), or by the
releaser of the one before, stamped before its marker was written (so the generation is
claimed later). Either way the hinted generation's release comes after `seen_at`, and a
purge comes at least `trust_s` after a release (the caller derives it from retention),
so a win *at the hinted generation itself* within `trust_s` of `seen_at` cannot be a
purged tenure: no floor read is needed. A win found by probing past the hint, a hint
without a stamp, or an old one still reads the floor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice

import orjson

from app.core.models import SlotRef
from app.store.backends.base import KV, can_read_many, get_all
from app.store.keys import (
    SLOT_PREFIX,
    parse_slot_key,
    released_key,
    sequence_hint_key,
    sequence_key,
    slot_floor_key,
    slot_hints_key,
    slot_key,
)


def claim_next(kv: KV, prefix: str, value: str, limit: int | None = None) -> int | None:
    """Claim the lowest free `prefix:{n}` (n < limit); None when all are taken."""
    n = claim_next_from(kv, prefix, value, sequence_start(kv, prefix), limit)
    if n is not None:
        kv.put(sequence_hint_key(prefix), str(n + 1))
    return n


def sequence_start(kv: KV, prefix: str) -> int:
    """Where a search for a free number of the sequence starts (its hint)."""
    return int(kv.get(sequence_hint_key(prefix)) or 0)


def claim_next_from(
    kv: KV, prefix: str, value: str, start: int, limit: int | None = None
) -> int | None:
    """`claim_next` from a hint read earlier, writing no hint (the caller batches it)."""
    n = start
    while limit is None or n < limit:
        if kv.put_if_absent(sequence_key(prefix, n), value):
            return n
        n += 1
    return None


def sequence_end(kv: KV, prefix: str, start: int | None = None) -> int:
    """One past the highest claimed number of a sequence (searched from `start`, or from
    the sequence's own hint)."""
    n = sequence_start(kv, prefix) if start is None else start
    while kv.contains(sequence_key(prefix, n)):
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class SlotHolder:
    """Who holds a slot generation, and since when."""

    job_id: str
    claimed_at: float

    def dumps(self) -> str:
        return json.dumps({"job_id": self.job_id, "claimed_at": self.claimed_at})

    @classmethod
    def loads(cls, raw: str) -> SlotHolder:
        data = json.loads(raw)
        return cls(job_id=str(data["job_id"]), claimed_at=float(data["claimed_at"]))


#: How far past twice its entries a hint record's highest place may lie and still be
#: written as a list ("g"); a sparser one is written as a dict ("gen"). Readers take both.
_SPARSE_SLACK = 16


@dataclass(slots=True)
class SlotHints:
    """Per place: the last generation seen, and which places were last seen held.

    `seq` carries search hints of sequences that belong to the same scope (a user's job
    index, a tenant's rate window), so one read serves the slot and the sequence, and one
    write stores both: they are only search aids, like the rest of the record.
    """

    generations: dict[int, int]
    held: set[int]
    seq: dict[str, int] = field(default_factory=dict)
    #: Whether the record was there (a scope that never held a slot has none).
    found: bool = False
    #: Per place: when its hinted generation was observed (see "Trusted hints").
    seen_at: dict[int, float] = field(default_factory=dict)
    #: Set by `take_place`: the `seen_at` of the hint it won at, when it won the hinted
    #: generation itself (None: it probed past the hint, or the hint had no stamp).
    won_hint_seen_at: float | None = None
    #: Whether `dumps` writes the stamps: only where a store trusts them (a Modal round
    #: trip saved per floor read) or the record already had them; locally a floor read
    #: is a cheap query, and the stamps would double each record's size.
    stamped: bool = False

    def dumps(self) -> str:
        payload: dict[str, object] = {}
        generations = self.generations
        end = max(generations, default=-1) + 1
        if self.stamped or end > 2 * len(generations) + _SPARSE_SLACK:
            payload["gen"] = {str(k): v for k, v in generations.items()}
        else:
            # Places are taken lowest first, so their numbers are dense: a list indexed by
            # place (0 where no hint, as for a place missing from "gen"). The dict's string
            # keys cost more CPU to write and read than all the rest: at 2,000 held places
            # an admission and its release spent 5 of their 6.4 ms on this record.
            in_order = len(generations) == end and list(generations) == list(range(end))
            payload["g"] = (
                list(generations.values())  # as read back: every place, in order
                if in_order
                else [generations.get(index, 0) for index in range(end)]
            )
        payload["held"] = sorted(self.held)
        if self.seq:
            payload["seq"] = self.seq
        if self.stamped and self.seen_at:
            # Whole seconds, rounded down: a stamp may only be earlier than what it saw.
            payload["at"] = {str(k): int(v) for k, v in self.seen_at.items()}
        return orjson.dumps(payload).decode()


def read_hints(kv: KV, scope: str, *, stamped: bool = False) -> SlotHints:
    """The scope's hints (empty if none were written); `stamped`: keep stamps on write."""
    raw = kv.get(slot_hints_key(scope))
    if raw is None:
        return SlotHints({}, set(), stamped=stamped)
    data = orjson.loads(raw)
    stamps = data.get("at")
    dense = data.get("g")
    # The list and "held" are JSON integers that orjson reads as ints: taken as they
    # are (an int() of each cost 270 us of the 400 at 2,000 held places; issue 13).
    # Only the dict form's keys are strings.
    return SlotHints(
        dict(enumerate(dense))
        if dense is not None
        else {int(k): int(v) for k, v in data["gen"].items()},
        set(data["held"]),
        {str(k): int(v) for k, v in data.get("seq", {}).items()},
        found=True,
        seen_at={int(k): float(v) for k, v in stamps.items()} if stamps else {},
        stamped=stamped or stamps is not None,
    )


def _write_hints(kv: KV, scope: str, hints: SlotHints) -> None:
    kv.put(slot_hints_key(scope), hints.dumps())


def claim_slot(kv: KV, scope: str, cap: int, holder: SlotHolder) -> SlotRef | None:
    """Take one of `cap` places in `scope`, or None if every place is held.

    One read of the scope's hints tells which places were free and at which
    generation, so an admission usually costs four round trips whatever the load; a
    wrong hint only costs probes. A refusal checks every place for real.
    """
    hints = read_hints(kv, scope)
    ref = take_checked(kv, scope, cap, holder, hints)
    if ref is not None:
        _write_hints(kv, scope, hints)
    return ref


def take_checked(
    kv: KV, scope: str, cap: int, holder: SlotHolder, hints: SlotHints
) -> SlotRef | None:
    """`take_place`, then the floor check, until a place is really won or none is free."""
    while True:
        ref = take_place(kv, scope, cap, holder, hints)
        if ref is None or not give_back_if_purged(kv, ref, hints):
            return ref


def take_place(
    kv: KV, scope: str, cap: int, holder: SlotHolder, hints: SlotHints
) -> SlotRef | None:
    """Win a place's generation from `hints` (updated in place); no floor check yet.

    The win only counts once `give_back_if_purged` said False for it: that read must
    come after the win (see the module docstring), so a caller may overlap it with
    other work but must not admit before it.
    """
    # Likely-free places first, then the held ones, each in index order. Lazily: the
    # first free place is found after skipping at most len(held) places, so a huge cap
    # (a tenant's "unlimited") costs nothing; materialising range(cap) cost 171 ms at 1e6.
    free_first = (index for index in range(cap) if index not in hints.held)
    order = chain(free_first, sorted(index for index in hints.held if index < cap))
    for index in _unless_seen_held(kv, scope, holder, hints, order):
        hinted = generation = hints.generations.get(index, 0)
        seen = hints.seen_at.get(index)
        while True:
            if kv.put_if_absent(slot_key(scope, index, generation), holder.dumps()):
                hints.won_hint_seen_at = seen if generation == hinted else None
                hints.generations[index] = generation
                hints.held.add(index)
                # Held by us from now: observed no later than the admission began.
                hints.seen_at[index] = holder.claimed_at
                return SlotRef(scope=scope, index=index, generation=generation)
            if not kv.contains(released_key(scope, index, generation)):
                # Held by a live tenure: try the next place, and say so in the hints
                # this admission writes back, so the next one skips it. Without this,
                # concurrent admissions of one scope (their hint writes overwrite each
                # other) probed ~350 held places per POST at 64 connections (issue 13).
                _note_held(hints, index, generation, holder)
                break
            generation += 1
    return None


def _note_held(hints: SlotHints, index: int, generation: int, holder: SlotHolder) -> None:
    hints.held.add(index)
    hints.generations[index] = generation
    hints.seen_at[index] = holder.claimed_at  # unreleased when probed, after this


#: Places `take_place` probes one by one before it screens the rest in batches.
_PROBE_FIRST = 2
#: Places per screening read (two keys each; SQLite reads 500 keys per query).
_SCREEN_PLACES = 250


def _unless_seen_held(
    kv: KV, scope: str, holder: SlotHolder, hints: SlotHints, order: Iterator[int]
) -> Iterator[int]:
    """`order`, less the places a batched read finds held by a live tenure at their hinted
    generation, where the dict reads many keys in one query (else `order` as it is).

    A full cap otherwise costs a put-if-absent and a marker read per place before its
    429: 1,000 statements at a cap of 500, about half the time a 1,000-request burst at
    that cap took to answer (8.4-9.3 s, now 4.2-4.5 s; issue 13). Only the screen's
    reads are batched: every place it lets through is still won by put-if-absent, so
    admission stays strict. A place released just after the read is missed, as it would
    be by a probe just before its release. The first places go unscreened: an admission
    under the cap usually wins the first.
    """
    if not can_read_many(kv):
        yield from order
        return
    yield from islice(order, _PROBE_FIRST)
    while chunk := list(islice(order, _SCREEN_PLACES)):
        generations = [hints.generations.get(index, 0) for index in chunk]
        keys = [
            key
            for index, generation in zip(chunk, generations, strict=True)
            for key in (slot_key(scope, index, generation), released_key(scope, index, generation))
        ]
        values = get_all(kv, keys)
        for n, (index, generation) in enumerate(zip(chunk, generations, strict=True)):
            if values[2 * n] is not None and values[2 * n + 1] is None:
                _note_held(hints, index, generation, holder)
            else:
                yield index


#: How far another container's clock may run ahead of ours and a stamp still count.
CLOCK_SKEW_S = 60.0


def give_back_if_purged(
    kv: KV, ref: SlotRef, hints: SlotHints, now: float | None = None, trust_s: float = 0.0
) -> bool:
    """True (and the key given back) if `ref` is a purged tenure below its place's floor.

    No read when `ref` was won at a hint observed less than `trust_s` before `now` (see
    "Trusted hints" in the module docstring).
    """
    seen = hints.won_hint_seen_at
    if seen is not None and now is not None and -CLOCK_SKEW_S < now - seen < trust_s:
        return False
    floor = _floor(kv, ref.scope, ref.index)
    if ref.generation >= floor:
        return False
    kv.pop(slot_key(ref.scope, ref.index, ref.generation))
    hints.generations[ref.index] = floor
    hints.seen_at.pop(ref.index, None)  # the floor says nothing of when it was claimed
    return True


def release_slot(kv: KV, ref: SlotRef) -> bool:
    """Free one tenure; True if this call freed it (idempotent, safe to race)."""
    if not mark_released(kv, ref):
        return False
    hints = read_hints(kv, ref.scope)
    note_released(hints, ref)
    _write_hints(kv, ref.scope, hints)
    return True


def mark_released(kv: KV, ref: SlotRef) -> bool:
    """The release itself (put-if-absent of the tenure's marker); True if this call did it.

    `release_slot` is this plus a hint update; a caller freeing several tenures may read
    their hints alongside and write them in one batch (`note_released`).
    """
    return kv.put_if_absent(*release_marker(ref))


def release_marker(ref: SlotRef) -> tuple[str, str]:
    """The key and value that mark one tenure released (written once, by put-if-absent
    in `mark_released`, or in a batch by the tenure's one releaser)."""
    return released_key(ref.scope, ref.index, ref.generation), "1"


def note_released(hints: SlotHints, ref: SlotRef, at: float | None = None) -> None:
    """Record in `hints` that `ref`'s place is free from the next generation on.

    `at`: a time before the release's marker was written (the next generation is claimed
    after it), stamped on the hint; None leaves the place without a stamp.
    """
    following = ref.generation + 1
    known = hints.generations.get(ref.index, 0)
    if following > known or (following == known and at is not None):
        hints.generations[ref.index] = following
        if at is None:
            hints.seen_at.pop(ref.index, None)
        else:
            hints.seen_at[ref.index] = at
    hints.held.discard(ref.index)


def _floor(kv: KV, scope: str, index: int) -> int:
    return int(kv.get(slot_floor_key(scope, index)) or 0)


def purge_slot(kv: KV, ref: SlotRef) -> int:
    """Delete a released tenure's keys (cleanup); returns how many keys went.

    Never touches a tenure still held. Raises the place's floor first (see the module
    docstring), so no claimer can take the deleted generation again.
    """
    if not kv.contains(released_key(ref.scope, ref.index, ref.generation)):
        return 0
    if _floor(kv, ref.scope, ref.index) <= ref.generation:
        kv.put(slot_floor_key(ref.scope, ref.index), str(ref.generation + 1))
    removed = 0
    # The key first, the marker last: between the two the tenure reads as released.
    for key in (slot_key, released_key):
        removed += kv.pop(key(ref.scope, ref.index, ref.generation)) is not None
    return removed


def release_held_by(kv: KV, scope: str, cap: int, job_id: str) -> int:
    """Free every tenure of `scope` that `job_id` holds; how many were freed.

    For an admission that crashed after winning a place but before its job record named
    it: no scan of the slots dict, a few probes per place. The won generation is never
    below the place's hint or floor (neither passes an unreleased tenure), and a place's
    tenures are contiguous from there, so probing up to the first absent key finds it.
    """
    generations = read_hints(kv, scope).generations
    freed = 0
    for index in range(cap):
        generation = max(generations.get(index, 0), _floor(kv, scope, index))
        while (raw := kv.get(slot_key(scope, index, generation))) is not None:
            if SlotHolder.loads(raw).job_id == job_id:
                ref = SlotRef(scope=scope, index=index, generation=generation)
                freed += release_slot(kv, ref)
            generation += 1
    return freed


def slot_holder(kv: KV, ref: SlotRef) -> SlotHolder | None:
    """Who holds this tenure, if anyone still does."""
    if kv.contains(released_key(ref.scope, ref.index, ref.generation)):
        return None
    raw = kv.get(slot_key(ref.scope, ref.index, ref.generation))
    return None if raw is None else SlotHolder.loads(raw)


def held_slots(kv: KV, scope_prefix: str = "") -> Iterator[tuple[SlotRef, SlotHolder]]:
    """Every unreleased tenure whose scope starts with `scope_prefix` (a maintenance scan)."""
    for key in kv.keys(SLOT_PREFIX + scope_prefix):
        scope, index, generation = parse_slot_key(key)
        ref = SlotRef(scope=scope, index=index, generation=generation)
        holder = slot_holder(kv, ref)
        if holder is not None:
            yield ref, holder


def active_count(kv: KV, scope: str) -> int:
    """How many places of `scope` are held now."""
    return sum(1 for ref, _ in held_slots(kv, scope) if ref.scope == scope)
