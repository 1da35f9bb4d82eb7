"""An in-process backend: a dict and deques under one lock.

Shipped (not only a test helper) and tested by the same contract suite as the real
backends, the way procrastinate ships its in-memory connector. Useful for unit tests and
for embedding the pipeline in a single process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

from app.store.backends.base import check_queue_item


class MemoryQueue:
    """A FIFO of strings, safe across threads."""

    def __init__(self) -> None:
        self.items: deque[str] = deque()
        self._ready = threading.Condition()

    def put(self, item: str) -> None:
        self.put_many([item])

    def put_many(self, items: Sequence[str]) -> None:
        for item in items:
            check_queue_item(item)
        with self._ready:
            self.items.extend(items)
            self._ready.notify_all()

    def get(self, timeout_s: float | None = 0.0) -> str | None:
        got = self.get_many(1, timeout_s)
        return got[0] if got else None

    def get_many(self, max_items: int, timeout_s: float | None = 0.0) -> list[str]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._ready:
            while not self.items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._ready.wait(remaining)
            return [self.items.popleft() for _ in range(min(max_items, len(self.items)))]

    def len(self) -> int:
        with self._ready:
            return len(self.items)


class MemoryKV:
    """A dict of strings whose conditional write is atomic across threads."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            return self.data.get(key)

    def put(self, key: str, value: str) -> None:
        with self._lock:
            self.data[key] = value

    def put_if_absent(self, key: str, value: str) -> bool:
        with self._lock:
            if key in self.data:
                return False
            self.data[key] = value
            return True

    def pop(self, key: str) -> str | None:
        with self._lock:
            return self.data.pop(key, None)

    def contains(self, key: str) -> bool:
        with self._lock:
            return key in self.data

    def read_many(self, keys: Sequence[str]) -> list[str | None]:
        with self._lock:
            return [self.data.get(key) for key in keys]

    def keys(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            snapshot = [k for k in self.data if k.startswith(prefix)]
        return iter(snapshot)


class MemoryBackend:
    """Named `MemoryQueue`s and `MemoryKV`s, created on first use."""

    def __init__(self) -> None:
        self.queues: dict[str, MemoryQueue] = {}
        self.kvs: dict[str, MemoryKV] = {}
        self._lock = threading.Lock()

    def queue(self, name: str) -> MemoryQueue:
        with self._lock:
            return self.queues.setdefault(name, MemoryQueue())

    def kv(self, name: str) -> MemoryKV:
        with self._lock:
            return self.kvs.setdefault(name, MemoryKV())

    def drop_kv(self, name: str) -> None:
        """Forget the dict called `name` (`base.drop_kv`)."""
        with self._lock:
            self.kvs.pop(name, None)

    def close(self) -> None:
        """Nothing to release."""

    def reset(self) -> None:
        """Forget every queue and dict (tests)."""
        with self._lock:
            self.queues.clear()
            self.kvs.clear()
