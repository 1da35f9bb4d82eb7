"""`modal.Queue` as it behaves (modal 1.6.4 `modal/queue.py`).

* `get` removes at once: there is no ack (queue.py:554 "Remove and return the next object").
* FIFO per partition; partitions are independent (queue.py:270-278).
* Limits: "up to 100,000 partitions, each with up to 5,000 items. Each item can be up to
  1 MiB, and each partition can be up to 64 MiB in total size" (queue.py:294-295). Sizes are
  of the cloudpickled item, as the SDK sends `serialize(v)` (queue.py:679).
* A blocking `put` on a full partition "will retry indefinitely or until `timeout`"
  (queue.py:625-627; the RPC retries RESOURCE_EXHAUSTED with `max_retries=None`,
  queue.py:688-694); with a timeout it raises `queue.Full`; `block=False` raises `queue.Full`
  at once (queue.py:630). Indefinitely cannot be tested, so the emulator records a hang in
  the ledger and raises `EmulatedHang` after `hang_bound_s` real seconds.
* A blocking `get` with a timeout raises `queue.Empty` (queue.py:526); non-blocking returns
  None (`get`) or [] (`get_many`); a blocking get issues one `QueueGet` per 50 s of waiting
  (queue.py:504) and is charged that many round trips. Without a timeout it is reported as a
  hang after the same bound (a test must never block forever).
* "each partition is cleared 24 hours after the last `put` operation", or after
  `partition_ttl` seconds (queue.py:282-284, 622).
* Partition keys must be 1-64 bytes (queue.py:326-333, `InvalidError`).
"""

from __future__ import annotations

import queue as stdlib_queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import TYPE_CHECKING, Any

import modal
from modal.exception import InvalidError, NotFoundError, RequestSizeError

from tests.modal_emulator import codec
from tests.modal_emulator.context import check_cancelled
from tests.modal_emulator.errors import EmulatedHang
from tests.modal_emulator.sdk import sdk_method

if TYPE_CHECKING:
    from tests.modal_emulator.emulator import ModalEmulator
    from tests.modal_emulator.ledger import Faults, Ledger

MAX_PARTITIONS = 100_000
MAX_PARTITION_ITEMS = 5_000
MAX_PARTITION_BYTES = 64 * 1024 * 1024
MAX_ITEM_BYTES = 1024 * 1024
DEFAULT_PARTITION_TTL_S = 24 * 3600
#: The SDK's longest single QueueGet (queue.py:504 `request_timeout = 50.0`).
GET_REQUEST_TIMEOUT_S = 50.0

_ids = count(1)


def validate_partition_key(partition: str | None) -> bytes:
    """As `_Queue.validate_partition_key` (queue.py:326)."""
    if partition is None:
        return b""
    key = partition.encode("utf-8")
    if len(key) == 0 or len(key) > 64:
        raise InvalidError("Queue partition key must be between 1 and 64 characters.")
    return key


@dataclass
class _Partition:
    items: deque[bytes] = field(default_factory=deque)
    size: int = 0
    last_put: float = 0.0
    ttl: float = DEFAULT_PARTITION_TTL_S


class QueueStore:
    """The server side of one named Queue."""

    def __init__(self, name: str, ledger: Ledger, faults: Faults, *, hang_bound_s: float) -> None:
        self.name = name
        self.object_id = f"qu-emu{next(_ids):06d}"
        self.ledger = ledger
        self.faults = faults
        self.hang_bound_s = hang_bound_s
        #: Items per partition; a simulation may scale it down (Modal's is 5,000).
        self.max_items = MAX_PARTITION_ITEMS
        self.cond = threading.Condition()
        self._partitions: dict[bytes, _Partition] = {}

    # ---- server side, lock held -----------------------------------------------------

    def _partition(self, key: bytes, *, create: bool = False) -> _Partition | None:
        part = self._partitions.get(key)
        now = self.ledger.clock.now()
        if part is not None and part.items and now - part.last_put >= part.ttl:
            del self._partitions[key]  # cleared `ttl` after its last put
            part = None
        if part is None and create:
            if len(self._partitions) >= MAX_PARTITIONS:
                raise stdlib_queue.Full(f"queue {self.name} has {MAX_PARTITIONS} partitions")
            part = self._partitions[key] = _Partition()
        return part

    def _fits(self, key: bytes, encoded: list[bytes]) -> bool:
        part = self._partition(key)
        items = 0 if part is None else len(part.items)
        size = 0 if part is None else part.size
        return (
            items + len(encoded) <= self.max_items
            and size + sum(map(len, encoded)) <= MAX_PARTITION_BYTES
        )

    def _take(self, key: bytes, n: int) -> list[bytes]:
        part = self._partition(key)
        if part is None or not part.items:
            return []
        taken: list[bytes] = []
        while part.items and len(taken) < n:
            data = part.items.popleft()
            part.size -= len(data)
            taken.append(data)
        self.cond.notify_all()  # room for blocked puts
        return taken

    def length(self, key: bytes | None) -> int:
        """Test helper: items waiting (all partitions when `key` is None), no round trip."""
        with self.cond:
            keys = list(self._partitions) if key is None else [key]
            return sum(len(p.items) for k in keys if (p := self._partition(k)) is not None)


class EmulatedQueue:
    """What `modal.Queue.from_name(...)` returns under the emulator."""

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
        self._store: QueueStore | None = None
        self._hydrate_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def object_id(self) -> str:
        return self._hydrated().object_id

    def _hydrated(self) -> QueueStore:
        with self._hydrate_lock:
            if self._store is None:
                store = self._server.find_queue(
                    self._name, self._environment_name, self._create_if_missing
                )
                with self._server.ledger.rpc("queue", self._name, "from_name"):
                    if store is None:
                        raise NotFoundError(f"Queue '{self._name}' not found")
                self._store = store
            return self._store

    # ---- puts -----------------------------------------------------------------------

    @sdk_method(modal.Queue)
    def put(
        self,
        v: Any,
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = DEFAULT_PARTITION_TTL_S,
    ) -> None:
        self._put("put", [v], block, timeout, partition, partition_ttl)

    @sdk_method(modal.Queue)
    def put_many(
        self,
        vs: list[Any],
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
        partition_ttl: int = DEFAULT_PARTITION_TTL_S,
    ) -> None:
        self._put("put_many", list(vs), block, timeout, partition, partition_ttl)

    def _put(
        self,
        op: str,
        vs: list[Any],
        block: bool,
        timeout: float | None,
        partition: str | None,
        partition_ttl: int,
    ) -> None:
        key = validate_partition_key(partition)
        encoded = [codec.dumps(v) for v in vs]
        if any(len(e) > MAX_ITEM_BYTES for e in encoded):
            # The server answers 413; the SDK turns it into RequestSizeError (queue.py:702).
            raise RequestSizeError(f"Queue.{op} request is too large")
        if not block and timeout is not None:
            warnings.warn("`timeout` argument is ignored for non-blocking put.", stacklevel=3)
        store = self._hydrated()
        clock = store.ledger.clock
        with store.ledger.rpc("queue", self._name, op), store.cond:
            if not store._fits(key, encoded):
                if not block:
                    raise stdlib_queue.Full(f"queue {self._name} partition is full")
                if not clock.wait_until(
                    store.cond,
                    lambda: store._fits(key, encoded),
                    timeout,
                    check=check_cancelled,
                    real_bound=store.hang_bound_s if timeout is None else None,
                ):
                    if timeout is None:
                        what = f"queue {self._name}: {op} on a full partition"
                        store.ledger.record_hang(what)
                        raise EmulatedHang(what)
                    raise stdlib_queue.Full(f"queue {self._name} partition is full")
            part = store._partition(key, create=True)
            assert part is not None
            part.items.extend(encoded)
            part.size += sum(map(len, encoded))
            part.last_put = clock.now()
            part.ttl = partition_ttl
            store.cond.notify_all()

    # ---- gets -----------------------------------------------------------------------

    @sdk_method(modal.Queue)
    def get(
        self, block: bool = True, timeout: float | None = None, *, partition: str | None = None
    ) -> Any | None:
        got = self._get("get", 1, block, timeout, partition)
        return got[0] if got else None

    @sdk_method(modal.Queue)
    def get_many(
        self,
        n_values: int,
        block: bool = True,
        timeout: float | None = None,
        *,
        partition: str | None = None,
    ) -> list[Any]:
        return self._get("get_many", n_values, block, timeout, partition)

    def _get(
        self, op: str, n: int, block: bool, timeout: float | None, partition: str | None
    ) -> list[Any]:
        key = validate_partition_key(partition)
        if not block and timeout is not None:
            warnings.warn("Timeout is ignored for non-blocking get.", stacklevel=3)
        store = self._hydrated()
        clock = store.ledger.clock
        started = clock.now()
        real_started = time.monotonic()
        try:
            with store.ledger.rpc("queue", self._name, op) as fault, store.cond:
                while True:
                    taken = store._take(key, n)
                    if taken and store.faults.take("lost_get"):
                        # The response carrying `taken[0]` was lost; the retry reads on.
                        fault.append("lost_get")
                        taken = taken[1:] + store._take(key, 1)
                    if taken or not block:
                        return [codec.loads(d) for d in taken]

                    def ready() -> bool:
                        part = store._partition(key)
                        return part is not None and bool(part.items)

                    if not clock.wait_until(
                        store.cond,
                        ready,
                        None if timeout is None else max(0.0, started + timeout - clock.now()),
                        check=check_cancelled,
                        real_bound=store.hang_bound_s if timeout is None else None,
                    ):
                        if timeout is None:
                            store.ledger.record_hang(f"queue {self._name}: {op} without timeout")
                            raise EmulatedHang(f"queue {self._name}: {op} without timeout")
                        raise stdlib_queue.Empty()
        finally:
            # One QueueGet per 50 s of blocking (queue.py:504): charge the extra requests.
            waited = max(clock.now() - started, (time.monotonic() - real_started))
            for _ in range(int(waited // GET_REQUEST_TIMEOUT_S)):
                with store.ledger.rpc("queue", self._name, f"{op}:poll"):
                    pass

    # ---- the rest -------------------------------------------------------------------

    @sdk_method(modal.Queue)
    def len(self, *, partition: str | None = None, total: bool = False) -> int:
        if partition and total:
            raise InvalidError("Partition must be null when requesting total length.")
        key = validate_partition_key(partition)
        store = self._hydrated()
        with store.ledger.rpc("queue", self._name, "len"):
            return store.length(None if total else key)

    @sdk_method(modal.Queue)
    def clear(self, *, partition: str | None = None, all: bool = False) -> None:
        if partition and all:
            raise InvalidError("Partition must be null when requesting to clear all.")
        key = validate_partition_key(partition)
        store = self._hydrated()
        with store.ledger.rpc("queue", self._name, "clear"), store.cond:
            if all:
                store._partitions.clear()
            else:
                store._partitions.pop(key, None)
            store.cond.notify_all()

    @sdk_method(modal.Queue)
    def iterate(
        self, *, partition: str | None = None, item_poll_timeout: float = 0.0
    ) -> Iterator[Any]:
        """Reads without removing (queue.py:754); one round trip for the snapshot."""
        key = validate_partition_key(partition)
        store = self._hydrated()
        with store.ledger.rpc("queue", self._name, "iterate"), store.cond:
            part = store._partition(key)
            snapshot = [] if part is None else list(part.items)
        for data in snapshot:
            yield codec.loads(data)
