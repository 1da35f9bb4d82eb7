"""`modal.Dict` as it behaves (modal 1.6.4 `modal/dict.py`).

* Values are serialized on write and deserialized on read (`_serialize_dict`, dict.py:48):
  a caller never shares an object with the store. cloudpickle, like the SDK.
* The only conditional write is `put(key, value, skip_if_exists=True) -> bool`
  (dict.py:556-573: `if_not_exists=skip_if_exists`, returns `resp.created`).
* "An individual Dict entry will expire after 7 days of inactivity (no reads or writes)"
  (dict.py:265). Reads are `get`, `contains`, `pop`; writes `put`, `update`. A refused
  put-if-absent and a `keys()`/`items()` stream are *not* counted as activity: the docs do
  not say they are, and assuming they are not can only make expiry bite earlier.
* `len()`: "an expensive operation and will return at most 100,000" (dict.py:516).
* `keys()/values()/items()` stream every entry (`DictContents.unary_stream`,
  dict.py:613-650) and are unordered ("results are unordered", dict.py:617). The emulator
  yields them in a seeded shuffled order and charges one round trip per page of
  `KEYS_PAGE_SIZE` entries.
* A handle from `from_name` is lazy: its first call costs one extra lookup round trip
  (dict.py:405 `_load` → `DictGetOrCreate`); `create_if_missing=False` on a missing dict
  fails there with `NotFoundError`.
* `modal.Dict.objects.delete(name)` removes the named object: a later `from_name` finds
  a new, empty one, and every call on a handle to the deleted one raises `NotFoundError`
  (the server no longer knows its object id).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import count
from typing import TYPE_CHECKING, Any

import modal
from modal.exception import NotFoundError

from tests.modal_emulator import codec
from tests.modal_emulator.sdk import sdk_method

if TYPE_CHECKING:
    from tests.modal_emulator.emulator import ModalEmulator
    from tests.modal_emulator.ledger import Faults, Ledger

#: 7 days of inactivity (dict.py:265).
ENTRY_TTL_S = 7 * 24 * 3600
#: `len()` returns at most this (dict.py:516).
LEN_CAP = 100_000
#: Entries per round trip of a contents stream. The SDK does not expose the server's
#: batching; 100 is the page size the same SDK uses for every paginated listing
#: (`max_page_size = 100`, dict.py:181 and queue.py:154), so a full scan of N keys is
#: charged ceil(N / 100) round trips (at least one).
KEYS_PAGE_SIZE = 100

_NO_DEFAULT: Any = object()
_ids = count(1)


@dataclass
class _Entry:
    data: bytes
    touched: float


class DictStore:
    """The server side of one named Dict."""

    def __init__(self, name: str, ledger: Ledger, faults: Faults, *, seed: int = 0) -> None:
        self.name = name
        self.object_id = f"di-emu{next(_ids):06d}"
        self.ledger = ledger
        self.faults = faults
        self._entries: dict[Any, _Entry] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        #: Set by `Dict.objects.delete`: calls on a handle to it fail from then on.
        self.deleted = False

    # Server-side helpers, called with the lock held.

    def _live(self, key: Any, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.touched >= ENTRY_TTL_S:
            del self._entries[key]
            return None
        return entry

    def purge_expired(self) -> int:
        """Drop every expired entry now (the server does it lazily; the result is the same)."""
        now = self.ledger.clock.now()
        with self._lock:
            dead = [k for k, e in self._entries.items() if now - e.touched >= ENTRY_TTL_S]
            for key in dead:
                del self._entries[key]
        return len(dead)

    def live_items(self) -> list[tuple[Any, bytes]]:
        now = self.ledger.clock.now()
        with self._lock:
            keys = list(self._entries)
            return [(k, e.data) for k in keys if (e := self._live(k, now)) is not None]

    def peek(self, key: Any) -> Any:
        """Test helper: the live value without touching it or counting a round trip."""
        with self._lock:
            entry = self._live(key, self.ledger.clock.now())
        return _NO_DEFAULT if entry is None else codec.loads(entry.data)


class EmulatedDict:
    """What `modal.Dict.from_name(...)` returns under the emulator."""

    def __init__(
        self,
        server: ModalEmulator,
        name: str,
        *,
        environment_name: str | None,
        create_if_missing: bool,
    ) -> None:
        self._server = server
        self._name = name
        self._environment_name = environment_name
        self._create_if_missing = create_if_missing
        self._store: DictStore | None = None
        self._hydrate_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def object_id(self) -> str:
        return self._hydrated().object_id

    def _hydrated(self) -> DictStore:
        with self._hydrate_lock:
            if self._store is None:
                store = self._server.find_dict(
                    self._name, self._environment_name, self._create_if_missing
                )
                with self._server.ledger.rpc("dict", self._name, "from_name"):
                    if store is None:
                        raise NotFoundError(f"Dict '{self._name}' not found")
                self._store = store
            return self._store

    def _op(self, op: str) -> Any:
        store = self._live_store(op)
        return store, store.ledger.rpc("dict", self._name, op), store.ledger.clock.now

    def _live_store(self, op: str) -> DictStore:
        store = self._hydrated()
        if store.deleted:
            with store.ledger.rpc("dict", self._name, op):
                raise NotFoundError(f"Dict '{self._name}' ({store.object_id}) was deleted")
        return store

    # ---- the SDK surface ------------------------------------------------------------

    @sdk_method(modal.Dict)
    def clear(self) -> None:
        store, rpc, _ = self._op("clear")
        with rpc, store._lock:
            store._entries.clear()

    @sdk_method(modal.Dict)
    def get(self, key: Any, default: Any | None = None) -> Any:
        store, rpc, now = self._op("get")
        with rpc, store._lock:
            t = now()
            entry = store._live(key, t)
            if entry is None:
                return default
            entry.touched = t
            data = entry.data
        return codec.loads(data)

    @sdk_method(modal.Dict)
    def contains(self, key: Any) -> bool:
        store, rpc, now = self._op("contains")
        with rpc, store._lock:
            t = now()
            entry = store._live(key, t)
            if entry is None:
                return False
            entry.touched = t
            return True

    @sdk_method(modal.Dict)
    def len(self) -> int:
        store, rpc, now = self._op("len")
        with rpc, store._lock:
            t = now()
            live = sum(1 for k in list(store._entries) if store._live(k, t) is not None)
            return min(live, LEN_CAP)

    @sdk_method(modal.Dict)
    def update(self, other: Mapping[Any, Any] | None = None, /, **kwargs: Any) -> None:
        contents: dict[Any, Any] = {}
        if other:
            contents.update({k: other[k] for k in other.keys()})
        contents.update(kwargs)
        serialized = {k: codec.dumps(v) for k, v in contents.items()}
        store, rpc, now = self._op("update")
        with rpc, store._lock:
            t = now()
            for key, data in serialized.items():
                store._entries[key] = _Entry(data, t)

    @sdk_method(modal.Dict)
    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        data = codec.dumps(value)
        store, rpc, now = self._op("put")
        with rpc as fault, store._lock:
            t = now()
            if skip_if_exists and store._live(key, t) is not None:
                return False
            store._entries[key] = _Entry(data, t)
            if skip_if_exists and store.faults.take("lost_ack"):
                fault.append("lost_ack")
                return False  # the retry saw its own write: the winner is told it lost
            return True

    @sdk_method(modal.Dict)
    def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        store, rpc, now = self._op("pop")
        with rpc, store._lock:
            entry = store._live(key, now())
            if entry is not None:
                del store._entries[key]
        if entry is None:
            if default is not _NO_DEFAULT:
                return default
            raise KeyError(f"{key} not in dict {store.object_id}")
        return codec.loads(entry.data)

    @sdk_method(modal.Dict)
    def __getitem__(self, key: Any) -> Any:
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            raise KeyError(f"{key} not in dict {self.object_id}")
        return value

    @sdk_method(modal.Dict)
    def __setitem__(self, key: Any, value: Any) -> None:
        self.put(key, value)

    @sdk_method(modal.Dict)
    def __delitem__(self, key: Any) -> Any:
        return self.pop(key)

    @sdk_method(modal.Dict)
    def __contains__(self, key: Any) -> bool:
        return bool(self.contains(key))

    def _stream(self, op: str) -> Iterator[tuple[Any, bytes]]:
        store = self._live_store(f"{op}:page")
        items = store.live_items()
        with store._lock:
            store._rng.shuffle(items)
        for start in range(0, max(len(items), 1), KEYS_PAGE_SIZE):
            with store.ledger.rpc("dict", self._name, f"{op}:page"):
                page = items[start : start + KEYS_PAGE_SIZE]
            yield from page

    @sdk_method(modal.Dict)
    def keys(self) -> Iterator[Any]:
        for key, _ in self._stream("keys"):
            yield key

    @sdk_method(modal.Dict)
    def values(self) -> Iterator[Any]:
        for _, data in self._stream("values"):
            yield codec.loads(data)

    @sdk_method(modal.Dict)
    def items(self) -> Iterator[tuple[Any, Any]]:
        for key, data in self._stream("items"):
            yield key, codec.loads(data)
