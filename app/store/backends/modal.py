"""The production backend: a thin mapping onto `modal.Queue` and `modal.Dict`.

No logic lives here beyond naming and argument mapping; the semantics the state core
needs (destructive get, atomic create-if-absent) are Modal's own. Objects are looked up
lazily with `from_name(..., create_if_missing=True)`, so importing and constructing
this works offline; only a real call needs Modal credentials.

The factories are parameters so the offline contract test can hand in objects that
enforce the installed `modal` package's real method signatures.
"""

from __future__ import annotations

import queue as stdlib_queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from app.core.errors import BackendError, QueueFull
from app.store.backends.base import check_queue_item

Factory = Callable[..., Any]

#: A blocking `modal.Queue.put` on a full partition (5,000 items / 64 MiB) retries
#: forever unless it has a timeout (SDK `queue.py`: RESOURCE_EXHAUSTED is retried without
#: limit), so every put here has one and a full queue becomes `QueueFull`.
DEFAULT_PUT_TIMEOUT_S = 10.0


def _wrap(exc: Exception) -> BackendError:
    return BackendError(f"modal: {type(exc).__name__}: {exc}")


class ModalQueue:
    """One `modal.Queue`, default partition; every put waits at most `put_timeout_s`."""

    def __init__(
        self, handle: Any, name: str = "", put_timeout_s: float = DEFAULT_PUT_TIMEOUT_S
    ) -> None:
        self._q = handle
        self._name = name
        self._put_timeout_s = put_timeout_s

    def _full(self) -> QueueFull:
        return QueueFull(self._name, retry_after_s=max(1, round(self._put_timeout_s)))

    def put(self, item: str) -> None:
        check_queue_item(item)
        try:
            self._q.put(item, timeout=self._put_timeout_s)
        except stdlib_queue.Full as exc:
            raise self._full() from exc
        except Exception as exc:
            raise _wrap(exc) from exc

    def put_many(self, items: Sequence[str]) -> None:
        for item in items:
            check_queue_item(item)
        try:
            self._q.put_many(list(items), timeout=self._put_timeout_s)
        except stdlib_queue.Full as exc:
            raise self._full() from exc
        except Exception as exc:
            raise _wrap(exc) from exc

    def get(self, timeout_s: float | None = 0.0) -> str | None:
        got = self.get_many(1, timeout_s)
        return got[0] if got else None

    def get_many(self, max_items: int, timeout_s: float | None = 0.0) -> list[str]:
        block = timeout_s is None or timeout_s > 0
        try:
            items = self._q.get_many(max_items, block=block, timeout=timeout_s if block else None)
        except stdlib_queue.Empty:
            return []
        except Exception as exc:
            raise _wrap(exc) from exc
        return [str(i) for i in items]

    def len(self) -> int:
        try:
            return int(self._q.len())
        except Exception as exc:
            raise _wrap(exc) from exc


class ModalKV:
    """One `modal.Dict` with string keys and values."""

    def __init__(self, handle: Any) -> None:
        self._d = handle

    def get(self, key: str) -> str | None:
        try:
            value = self._d.get(key)
        except Exception as exc:
            raise _wrap(exc) from exc
        return None if value is None else str(value)

    def put(self, key: str, value: str) -> None:
        try:
            self._d.put(key, value)
        except Exception as exc:
            raise _wrap(exc) from exc

    def put_many(self, items: Mapping[str, str]) -> None:
        """Several keys in one `Dict.update` round trip (see `base.put_all`)."""
        try:
            self._d.update(dict(items))
        except Exception as exc:
            raise _wrap(exc) from exc

    def put_if_absent(self, key: str, value: str) -> bool:
        try:
            return bool(self._d.put(key, value, skip_if_exists=True))
        except Exception as exc:
            raise _wrap(exc) from exc

    def pop(self, key: str) -> str | None:
        try:
            value = self._d.pop(key, None)
        except Exception as exc:
            raise _wrap(exc) from exc
        return None if value is None else str(value)

    def contains(self, key: str) -> bool:
        try:
            return bool(self._d.contains(key))
        except Exception as exc:
            raise _wrap(exc) from exc

    def keys(self, prefix: str = "") -> Iterator[str]:
        try:
            # modal.Dict streams keys through .keys(); it is not a Mapping.
            found = [str(k) for k in self._d.keys() if str(k).startswith(prefix)]
        except Exception as exc:
            raise _wrap(exc) from exc
        return iter(found)

    def items_with_prefix(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        """Keys and values in one stream (`Dict.items()`; see `base.scan_items`)."""
        try:
            found = [(str(k), str(v)) for k, v in self._d.items() if str(k).startswith(prefix)]
        except Exception as exc:
            raise _wrap(exc) from exc
        return iter(found)


class ModalBackend:
    """Queues and dicts named `{prefix}-{name}` in one Modal environment.

    One handle per name per process: a fresh `from_name` handle costs a lookup RPC on its
    first use, so handing out the same one saves a round trip per call site.
    """

    #: Each call is a network round trip: independent ones are worth running at once.
    concurrent_calls = True

    def __init__(
        self,
        prefix: str,
        environment_name: str | None = None,
        queue_factory: Factory | None = None,
        dict_factory: Factory | None = None,
        put_timeout_s: float = DEFAULT_PUT_TIMEOUT_S,
        dict_deleter: Factory | None = None,
    ) -> None:
        if queue_factory is None or dict_factory is None:
            import modal  # deferred: the local backend never needs the SDK loaded

            queue_factory = queue_factory or modal.Queue.from_name
            dict_factory = dict_factory or modal.Dict.from_name
            dict_deleter = dict_deleter or modal.Dict.objects.delete
        self._prefix = prefix
        self._env = environment_name
        self._queue_factory = queue_factory
        self._dict_factory = dict_factory
        self._put_timeout_s = put_timeout_s
        #: None with injected factories and no deleter (a fake): a dropped dict stays.
        self._dict_deleter = dict_deleter
        self._queues: dict[str, ModalQueue] = {}
        self._dicts: dict[str, ModalKV] = {}

    def _name(self, name: str) -> str:
        return f"{self._prefix}-{name}"

    def queue(self, name: str) -> ModalQueue:
        if name not in self._queues:  # a race builds two handles: harmless, one is kept
            handle = self._queue_factory(
                self._name(name), environment_name=self._env, create_if_missing=True
            )
            self._queues.setdefault(name, ModalQueue(handle, name, self._put_timeout_s))
        return self._queues[name]

    def kv(self, name: str) -> ModalKV:
        if name not in self._dicts:
            handle = self._dict_factory(
                self._name(name), environment_name=self._env, create_if_missing=True
            )
            self._dicts.setdefault(name, ModalKV(handle))
        return self._dicts[name]

    def drop_kv(self, name: str) -> None:
        """Delete the Dict called `name` (`Dict.objects.delete`; `base.drop_kv`): one
        round trip, and this process's handle of it is forgotten."""
        self._dicts.pop(name, None)
        if self._dict_deleter is None:
            return
        try:
            self._dict_deleter(self._name(name), allow_missing=True, environment_name=self._env)
        except Exception as exc:
            raise _wrap(exc) from exc

    def close(self) -> None:
        """Modal handles hold no connections of ours."""
