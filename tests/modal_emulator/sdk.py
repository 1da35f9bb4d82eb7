"""Binding every emulated call to the installed SDK's real signatures (as tests/modal_fake.py).

`@sdk_method(modal.Dict)` on an emulator method binds each call's arguments against
`inspect.signature(modal.Dict.<name>)` before running, so a parameter Modal does not have
fails with TypeError here exactly as it would in production. The bound method also has
`.aio`, like the SDK's synchronicity wrappers, running the same code in a worker thread
(`asyncio.to_thread` copies the context, so the current input travels with it).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any

_SIGNATURES: dict[tuple[type, str], inspect.Signature] = {}
#: Call shapes (method, positional count, keyword names) that bound once. Whether a call
#: binds depends only on its shape (`Signature.bind` checks arity and names, never
#: values), so a shape seen bound binds again: the check costs a set lookup, not a bind.
_BOUND_SHAPES: set[tuple[type, str, int, tuple[str, ...]]] = set()


def signature_of(real_cls: type, name: str) -> inspect.Signature:
    """The SDK method's signature (AttributeError if the SDK lacks it)."""
    key = (real_cls, name)
    if key not in _SIGNATURES:
        _SIGNATURES[key] = inspect.signature(getattr(real_cls, name))
    return _SIGNATURES[key]


def bind(real_cls: type, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """TypeError unless `real_cls.name(self, *args, **kwargs)` would bind."""
    shape = (real_cls, name, len(args), tuple(kwargs))
    if shape in _BOUND_SHAPES:
        return
    signature_of(real_cls, name).bind(None, *args, **kwargs)
    _BOUND_SHAPES.add(shape)


def bind_static(real: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """TypeError unless `real(*args, **kwargs)` would bind (classmethods, factories)."""
    inspect.signature(real).bind(*args, **kwargs)


class BoundSdkMethod:
    """A call checked against the SDK, usable as `obj.m(...)` and `await obj.m.aio(...)`."""

    def __init__(self, real_cls: type, name: str, fn: Callable[..., Any]) -> None:
        self._real_cls = real_cls
        self._name = name
        self._fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bind(self._real_cls, self._name, args, kwargs)
        return self._fn(*args, **kwargs)

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        bind(self._real_cls, self._name, args, kwargs)
        result = await asyncio.to_thread(self._fn, *args, **kwargs)
        if inspect.isgenerator(result):
            return list(result)
        return result


class sdk_method:  # a decorator, lower-case like `property`
    """Descriptor: the decorated method is checked against `real_cls.<same name>`."""

    def __init__(self, real_cls: type) -> None:
        self._real_cls = real_cls
        self._fn: Callable[..., Any] | None = None
        self._name = ""

    def __call__(self, fn: Callable[..., Any]) -> sdk_method:
        self._fn = fn
        self._name = fn.__name__
        signature_of(self._real_cls, self._name)  # fail at import if the SDK lacks it
        functools.update_wrapper(self, fn)
        return self

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        if obj is None:
            return self
        assert self._fn is not None
        return BoundSdkMethod(self._real_cls, self._name, self._fn.__get__(obj))
