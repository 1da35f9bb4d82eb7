"""The narrow storage protocol every stage and the state core are written against.

Two primitives, chosen because they are all that Modal offers and so all we may rely on:

* a named FIFO **queue** whose `get` is destructive (no ack, no visibility timeout);
* a named **dict** of string keys to string values whose only atomic conditional write
  is `put_if_absent` (Modal's `put(..., skip_if_exists=True)`).

Values are JSON strings, never pickles, so records outlive library upgrades. Every
backend must behave the same for the contract suite in `tests/contract/`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from app.core.errors import (
    QueueItemTooLarge,
)

#: Modal refuses queue items over 1 MiB; every backend refuses them too, so a message
#: that works locally also works in production.
MAX_QUEUE_ITEM_BYTES = 1024 * 1024


class Queue(Protocol):
    """A named FIFO queue of strings."""

    def put(self, item: str) -> None:
        """Append one item."""

    def put_many(self, items: Sequence[str]) -> None:
        """Append several items, in order."""

    def get(self, timeout_s: float | None = 0.0) -> str | None:
        """Remove and return the oldest item; wait up to `timeout_s`, None if still empty.

        `timeout_s=None` waits forever; `0` does not wait.
        """

    def get_many(self, max_items: int, timeout_s: float | None = 0.0) -> list[str]:
        """Remove and return up to `max_items`, waiting up to `timeout_s` for the first."""

    def len(self) -> int:
        """Number of items waiting."""


class KV(Protocol):
    """A named dict of string keys and string values."""

    def get(self, key: str) -> str | None:
        """The value, or None."""

    def put(self, key: str, value: str) -> None:
        """Write unconditionally (last writer wins)."""

    def put_if_absent(self, key: str, value: str) -> bool:
        """Atomically write only if the key is absent; True if this call wrote it."""

    def pop(self, key: str) -> str | None:
        """Remove and return the value, or None if absent."""

    def contains(self, key: str) -> bool:
        """Whether the key is present."""

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix`, in no particular order (a maintenance scan)."""

    # Optional: `read_many(keys) -> list[str | None]`, several keys in one query where
    # the store has one (SQLite, memory); `get_all` falls back to one `get` per key.


class Backend(Protocol):
    """Opens named queues and dicts."""

    def queue(self, name: str) -> Queue:
        """The queue called `name`, created if missing."""

    def kv(self, name: str) -> KV:
        """The dict called `name`, created if missing."""

    def close(self) -> None:
        """Release connections; the data stays."""

    # Optional: `drop_kv(name)`, delete the dict called `name` and all it holds (see
    # `drop_kv` below).


def check_queue_item(item: str) -> None:
    """Refuse an item Modal would refuse."""
    if len(item.encode()) > MAX_QUEUE_ITEM_BYTES:
        raise QueueItemTooLarge(f"queue item is {len(item.encode())} bytes (limit 1 MiB)")


def put_all(kv: KV, items: Mapping[str, str]) -> None:
    """Write several keys unconditionally, in one round trip where the dict offers it.

    Not atomic as a whole (Modal's `Dict.update` is one RPC, nothing more is promised):
    only for writes that need no order among themselves.
    """
    update = getattr(kv, "put_many", None)
    if update is not None:
        update(items)
        return
    for key, value in items.items():
        kv.put(key, value)


def get_all(kv: KV, keys: Sequence[str]) -> list[str | None]:
    """Several keys' values, in order (None where absent), in one query where the dict
    offers it (`read_many`); else one `get` each (Modal has no batched read)."""
    read_many = getattr(kv, "read_many", None)
    if read_many is not None:
        values: list[str | None] = read_many(keys)
        return values
    return [kv.get(key) for key in keys]


def can_read_many(kv: KV) -> bool:
    """Whether `get_all` on `kv` is one query (else the caller may overlap the gets)."""
    return getattr(kv, "read_many", None) is not None


def scan_items(kv: KV, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key, value) of every key starting with `prefix` (a maintenance scan), streamed
    with the values where the dict offers it (`Dict.items()`: one round trip per page
    on Modal, where keys then a get each cost one per key)."""
    stream = getattr(kv, "items_with_prefix", None)
    if stream is not None:
        found: Iterator[tuple[str, str]] = stream(prefix)
        return found
    return ((key, value) for key in kv.keys(prefix) if (value := kv.get(key)) is not None)


def drop_kv(backend: Backend, name: str) -> None:
    """Delete the dict called `name`, entries and all, where the backend can (each does
    but a fake; on Modal the named object goes, so an hour's dict does not outlive the
    hour's cleanup); a later `kv(name)` starts empty."""
    drop = getattr(backend, "drop_kv", None)
    if drop is not None:
        drop(name)
