"""The RPC ledger: every emulated Modal operation is one network round trip, written here.

Modal's docs put each Dict/Queue operation at "a few dozen ms"; the emulator charges a
configurable latency per op (default 25 ms) to the simulated clock, and optionally sleeps
for real (all or a fraction of it) so that concurrent calls overlap in real time.

*Calls in sequence* for a step is the longest chain of calls each of which started after
the previous one ended (real-time intervals). With real sleeping on, calls that a caller
runs concurrently (threads, `.aio` + `asyncio.gather`) overlap and do not lengthen the
chain; without it every call is an instant and the chain is the total: the measure can
only over-count, never flatter.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.modal_emulator.clock import SimClock
from tests.modal_emulator.context import check_cancelled, current_input

DEFAULT_LATENCY_S = 0.025


@dataclass(frozen=True, slots=True)
class Rpc:
    """One round trip."""

    index: int
    kind: str  # "dict" | "queue" | "volume" | "function" | "function_call"
    name: str  # the object's name (or function name / call id)
    op: str  # the SDK method, e.g. "put", "get_many", "keys:page", "from_name"
    step: str | None
    started: float  # time.perf_counter() when it began
    ended: float  # and when it returned
    sim_time: float  # simulated time when it began
    container: str | None
    call_id: str | None
    fault: str | None = None


@dataclass
class Faults:
    """RPC-retry faults (Modal's client retries unary RPCs, MODAL-FACTS.md).

    * `lost_ack`: a `put(..., skip_if_exists=True)` that wrote, but whose response was lost;
      the client's retry finds the key present and answers False to the caller who won.
    * `lost_get`: a queue `get` whose response (with the item) was lost; the retry takes the
      next item, so one item is gone for good.

    Each fires for the next `*_next` calls (deterministic), else with `*_rate` probability
    drawn from a seeded RNG.
    """

    seed: int = 0
    lost_ack_rate: float = 0.0
    lost_get_rate: float = 0.0
    lost_ack_next: int = 0
    lost_get_next: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def take(self, kind: str) -> bool:
        """Whether fault `kind` ("lost_ack" or "lost_get") fires for this call."""
        with self._lock:
            nxt = f"{kind}_next"
            if getattr(self, nxt) > 0:
                setattr(self, nxt, getattr(self, nxt) - 1)
                return True
            rate: float = getattr(self, f"{kind}_rate")
            return rate > 0 and self._rng.random() < rate


class _RpcScope:
    """One round trip in progress (a class, not a generator context manager: a month
    makes millions of these)."""

    __slots__ = ("fault", "kind", "ledger", "name", "op", "sim_time", "started")

    def __init__(self, ledger: Ledger, kind: str, name: str, op: str) -> None:
        self.ledger = ledger
        self.kind = kind
        self.name = name
        self.op = op
        self.fault: list[str] = []
        self.started = 0.0
        self.sim_time = 0.0

    def __enter__(self) -> list[str]:
        check_cancelled()
        ledger = self.ledger
        self.started = time.perf_counter()
        self.sim_time = ledger.clock.now()
        if ledger.real_latency_scale > 0:
            time.sleep(ledger.latency(self.op) * ledger.real_latency_scale)
        return self.fault

    def __exit__(self, *exc: object) -> None:
        self.ledger._record(self)


class Ledger:
    """All round trips, with latency, steps and hang records."""

    def __init__(
        self,
        clock: SimClock,
        *,
        latency_s: float = DEFAULT_LATENCY_S,
        latency_per_op: dict[str, float] | None = None,
        real_latency_scale: float = 0.0,
    ) -> None:
        self.clock = clock
        self.latency_s = latency_s
        self.latency_per_op = dict(latency_per_op or {})
        #: Fraction of each op's latency slept for real (0: simulated only; 1: real time).
        self.real_latency_scale = real_latency_scale
        self._lock = threading.Lock()
        self._rpcs: list[Rpc] = []
        self._step: str | None = None
        #: One entry per blocking call that would have hung on Modal.
        self.hangs: list[str] = []
        self.faults_fired: list[str] = []

    # ---- steps --------------------------------------------------------------------

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Tag every RPC made (from any thread) until exit with `name`."""
        with self._lock:
            previous, self._step = self._step, name
        try:
            yield
        finally:
            with self._lock:
                self._step = previous

    # ---- recording ----------------------------------------------------------------

    def latency(self, op: str) -> float:
        return self.latency_per_op.get(op, self.latency_s)

    def rpc(self, kind: str, name: str, op: str) -> _RpcScope:
        """Account one round trip around the body; the body may append a fault name."""
        return _RpcScope(self, kind, name, op)

    def _record(self, scope: _RpcScope) -> None:
        latency = self.latency(scope.op)
        self.clock.advance(latency)
        ended = time.perf_counter()
        ctx = current_input()
        fault = scope.fault
        with self._lock:
            rpc = Rpc(
                index=len(self._rpcs),
                kind=scope.kind,
                name=scope.name,
                op=scope.op,
                step=self._step,
                started=scope.started,
                ended=ended,
                sim_time=scope.sim_time,
                container=None if ctx is None else ctx.container.id,
                call_id=None if ctx is None else ctx.call_id,
                fault=fault[0] if fault else None,
            )
            self._rpcs.append(rpc)
            if fault:
                self.faults_fired.append(fault[0])

    def record_hang(self, what: str) -> None:
        with self._lock:
            self.hangs.append(what)

    # ---- reading ------------------------------------------------------------------

    def calls(
        self,
        *,
        step: str | None = None,
        kind: str | None = None,
        name: str | None = None,
        op: str | None = None,
    ) -> list[Rpc]:
        with self._lock:
            rpcs = list(self._rpcs)
        return [
            r
            for r in rpcs
            if (step is None or r.step == step)
            and (kind is None or r.kind == kind)
            and (name is None or r.name == name)
            and (op is None or r.op == op)
        ]

    def count(self, **filters: str) -> int:
        """Number of round trips matching the filters (step, kind, name, op)."""
        return len(self.calls(**filters))

    def by_op(self, *, step: str | None = None) -> Counter[tuple[str, str, str]]:
        """Round trips per (kind, name, op)."""
        return Counter((r.kind, r.name, r.op) for r in self.calls(step=step))

    def sequential(self, step: str) -> int:
        """The longest chain of non-overlapping calls in `step` (calls in sequence)."""
        return longest_chain(self.calls(step=step))

    def total_latency_s(self, step: str) -> float:
        """What the step's critical path costs at the configured latencies (approximate)."""
        rpcs = self.calls(step=step)
        if not rpcs:
            return 0.0
        return self.sequential(step) * (sum(self.latency(r.op) for r in rpcs) / len(rpcs))

    def reset(self) -> None:
        with self._lock:
            self._rpcs.clear()
            self.hangs.clear()
            self.faults_fired.clear()


def longest_chain(rpcs: list[Rpc]) -> int:
    """Longest sequence r1, r2, ... with r_i.ended <= r_{i+1}.started (O(n log n))."""
    ordered = sorted(rpcs, key=lambda r: (r.started, r.ended))
    finished: list[tuple[float, int]] = []  # heap of (ended, chain length)
    best_done = 0
    best = 0
    for rpc in ordered:
        while finished and finished[0][0] <= rpc.started:
            best_done = max(best_done, heapq.heappop(finished)[1])
        chain = best_done + 1
        best = max(best, chain)
        heapq.heappush(finished, (rpc.ended, chain))
    return best
