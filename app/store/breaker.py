"""The render circuit breaker: stop waking GPU containers that cannot start.

A broken image or ComfyUI fails every container start; Modal retries the input, and
every sweep and hand-off would spawn another GPU container: a crash loop billed by the
second. Each failed start is recorded here (one small record: recent failure times and
until when the circuit is open); `modal_render_breaker_failures` failures within
`modal_render_breaker_window_s` open it for `modal_render_breaker_cooldown_s`, during
which nothing wakes render (jobs wait in the queue, their deadlines still apply). A
successful start closes it.

The record is read-modify-written without a lock (the store has no compare-and-set):
two containers failing at the same instant may count as one failure, which only delays
opening by one start; it never opens the circuit wrongly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from app.core.config import Settings
from app.core.logs import get_logger
from app.store.backends.base import Backend
from app.store.keys import BREAKER_DICT, RENDER_BREAKER_KEY


@dataclass(slots=True)
class BreakerState:
    """Recent start-up failures and, when open, until when."""

    failures: list[float] = field(default_factory=list)
    open_until: float = 0.0

    def dumps(self) -> str:
        return json.dumps({"failures": self.failures, "open_until": self.open_until})

    @classmethod
    def loads(cls, raw: str | None) -> BreakerState:
        if raw is None:
            return cls()
        data = json.loads(raw)
        return cls([float(t) for t in data.get("failures", [])], float(data.get("open_until", 0)))


class RenderBreaker:
    """Counts render start-up failures and says whether render may be woken."""

    def __init__(self, backend: Backend, clock: Callable[[], float], settings: Settings) -> None:
        self.kv = backend.kv(BREAKER_DICT)
        self.clock = clock
        self.threshold = settings.modal_render_breaker_failures
        self.window_s = settings.modal_render_breaker_window_s
        self.cooldown_s = settings.modal_render_breaker_cooldown_s

    def state(self) -> BreakerState:
        return BreakerState.loads(self.kv.get(RENDER_BREAKER_KEY))

    def is_open(self) -> bool:
        return self.clock() < self.state().open_until

    def record_failure(self) -> BreakerState:
        """One failed container start; opens the circuit at the threshold."""
        now = self.clock()
        state = self.state()
        recent = [t for t in state.failures if now - t < self.window_s] + [now]
        state = BreakerState(recent[-self.threshold :], state.open_until)
        if len(recent) >= self.threshold and now >= state.open_until:
            state.open_until = now + self.cooldown_s
            get_logger().error("render_circuit_open", failures=len(recent), until=state.open_until)
        self.kv.put(RENDER_BREAKER_KEY, state.dumps())
        return state

    def record_success(self) -> None:
        """A container started: failures so far no longer count."""
        if self.state().failures:
            self.kv.put(RENDER_BREAKER_KEY, BreakerState().dumps())
