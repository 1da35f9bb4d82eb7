"""Stand-ins for `modal.Queue` / `modal.Dict` that enforce the installed SDK's signatures.

Every call is bound against `inspect.signature` of the real method in the installed
`modal` package before the in-memory behaviour runs, so a renamed or removed parameter
(or method) in a new SDK breaks the contract tests instead of production. The behaviour
mirrors Modal's documented semantics: destructive FIFO `get`, `queue.Empty` on a blocking
timeout, `put(..., skip_if_exists=True) -> bool`, `pop` raising KeyError without default.
"""

from __future__ import annotations

import inspect
import queue as stdlib_queue
import threading
import time
from collections import deque
from typing import Any

import modal

_NO_DEFAULT = object()


class _Enforced:
    """Delegates attribute calls to `impl` after binding them to `real_cls`'s signature."""

    def __init__(self, real_cls: type, impl: object) -> None:
        self._real_cls = real_cls
        self._impl = impl
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._real_cls, name)  # AttributeError if Modal removed it
        signature = inspect.signature(real)
        behaviour = getattr(self._impl, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            signature.bind(None, *args, **kwargs)  # None stands for `self`
            self.calls.append(name)
            return behaviour(*args, **kwargs)

        return call


class _QueueBehaviour:
    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.cond = threading.Condition()

    def put(self, v: Any, block: bool = True, timeout: float | None = None, **_: Any) -> None:
        self.put_many([v])

    def put_many(
        self, vs: list[Any], block: bool = True, timeout: float | None = None, **_: Any
    ) -> None:
        with self.cond:
            self.items.extend(vs)
            self.cond.notify_all()

    def get(self, block: bool = True, timeout: float | None = None, **_: Any) -> Any:
        got = self.get_many(1, block, timeout)
        return got[0] if got else None

    def get_many(
        self, n_values: int, block: bool = True, timeout: float | None = None, **_: Any
    ) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not self.items:
                if not block:
                    return []
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise stdlib_queue.Empty()
                self.cond.wait(remaining)
            return [self.items.popleft() for _ in range(min(n_values, len(self.items)))]

    def len(self, **_: Any) -> int:
        with self.cond:
            return len(self.items)


class _DictBehaviour:
    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self.lock:
            return self.data.get(key, default)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        with self.lock:
            if skip_if_exists and key in self.data:
                return False
            self.data[key] = value
            return True

    def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        with self.lock:
            if key in self.data:
                return self.data.pop(key)
        if default is _NO_DEFAULT:
            raise KeyError(key)
        return default

    def contains(self, key: Any) -> bool:
        with self.lock:
            return key in self.data

    def update(self, other: Any = None, /, **kwargs: Any) -> None:
        with self.lock:
            self.data.update(other or {}, **kwargs)

    def keys(self) -> Any:
        with self.lock:
            return iter(list(self.data))

    def items(self) -> Any:
        with self.lock:
            return iter(list(self.data.items()))


class FakeModal:
    """`from_name` factories for queues and dicts, checked against the real `from_name`."""

    def __init__(self) -> None:
        self.queues: dict[str, _Enforced] = {}
        self.dicts: dict[str, _Enforced] = {}
        self.lookups: list[tuple[str, dict[str, Any]]] = []

    def queue_from_name(self, name: str, **kwargs: Any) -> _Enforced:
        inspect.signature(modal.Queue.from_name).bind(name, **kwargs)
        self.lookups.append((name, kwargs))
        return self.queues.setdefault(name, _Enforced(modal.Queue, _QueueBehaviour()))

    def dict_from_name(self, name: str, **kwargs: Any) -> _Enforced:
        inspect.signature(modal.Dict.from_name).bind(name, **kwargs)
        self.lookups.append((name, kwargs))
        return self.dicts.setdefault(name, _Enforced(modal.Dict, _DictBehaviour()))

    def dict_delete(self, name: str, **kwargs: Any) -> None:
        """`modal.Dict.objects.delete`, checked against the real one (`self` first)."""
        inspect.signature(modal.Dict.objects.delete).bind(None, name, **kwargs)
        self.dicts.pop(name, None)
