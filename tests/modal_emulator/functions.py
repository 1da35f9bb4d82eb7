"""Functions, containers, inputs, `spawn`, `FunctionCall` and schedules.

* A function runs at most `max_containers` containers (`@app.function(max_containers=...)`)
  of at most `max_inputs` concurrent inputs each (`@modal.concurrent(max_inputs=...)`);
  calls beyond that wait in the function's input queue (`get_current_stats().backlog`).
* `spawn()` is one round trip and returns a `FunctionCall` (`_functions.py:2258`);
  `FunctionCall.from_id()` is lazy and costs nothing (`_functions.py:2539-2575`: "this
  loader doesn't do anything in practice"); `get(timeout)` waits for the result.
* `FunctionCall.cancel()` (`_functions.py:2523`): with `max_inputs == 1` the input gets
  `InputCancellation("Input was cancelled by user")` (`_container_entrypoint.py:255-258`,
  SIGUSR1); with `max_inputs > 1` the SDK SIGINTs the whole container: "This shuts down the
  container, causing concurrently running inputs to be rescheduled in other containers"
  (`_container_entrypoint.py:204-217`). The other inputs get `ContainerStopped` mid-message
  and are run again from the start elsewhere; the container does not commit its volumes.
  `terminate_containers=True` does the same for any `max_inputs` (`_functions.py:2527`).
* Cancellation is delivered at the input's next emulated Modal call or blocking wait (or
  `emulator.checkpoint()`): a signal handler in Python also runs only between bytecodes,
  and the emulator cannot interrupt arbitrary C code either.
* Schedules: `modal.Period` fires every period counted from deploy (`deploy_time`, the
  emulator's start; "a redeploy resets a Period", MODAL-FACTS.md); `modal.Cron` fires at
  each matching UTC minute. They fire only when the clock is advanced through
  `emulator.advance()`.

Two modes: `threads` (each input runs in its own thread, bounded by the slots) and
`manual` (deterministic: spawned inputs wait until `step()` / `run_until_idle()` runs them,
one at a time, in the caller's thread).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modal
from modal.exception import InputCancellation

from tests.modal_emulator.context import InputContext, _current, check_cancelled
from tests.modal_emulator.errors import ContainerStopped
from tests.modal_emulator.volume import VolumeStore, VolumeView

if TYPE_CHECKING:
    from tests.modal_emulator.emulator import ModalEmulator

_call_ids = count(1)
_container_ids = count(1)

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "pending",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)


@dataclass(frozen=True)
class CurrentStats:
    """Like `modal.functions.FunctionCurrentStats` (backlog, num_total_runners)."""

    backlog: int
    num_total_runners: int


class EmulatedFunctionCall:
    """A `FunctionCall`: one spawned input."""

    def __init__(self, function: EmulatedFunction, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.object_id = f"fc-emu{next(_call_ids):08d}"
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self.status = PENDING
        self.result: Any = None
        self.exception: BaseException | None = None
        self.attempts = 0
        self.done = threading.Event()

    def _finish(self, status: str, result: Any = None, exc: BaseException | None = None) -> None:
        self.status, self.result, self.exception = status, result, exc
        self.done.set()

    def get(self, timeout: float | None = None, *, index: int = 0) -> Any:
        """Wait for the result (TimeoutError as the SDK's `OutputExpiredError`-free path)."""
        with self.function.server.ledger.rpc("function_call", self.object_id, "get"):
            if self.function.server.mode == "manual":
                self.function.server.run_until_idle()
            if not self.done.wait(timeout):
                raise TimeoutError(f"{self.object_id} did not finish in {timeout} s")
        if self.status == CANCELLED:
            raise InputCancellation("Input was cancelled by user")
        if self.exception is not None:
            raise self.exception
        return self.result

    def cancel(self, terminate_containers: bool = False) -> None:
        with self.function.server.ledger.rpc("function_call", self.object_id, "cancel"):
            self.function.cancel(self, terminate_containers=terminate_containers)


class Container:
    """One container of a function: its slots, its inputs and its volume views."""

    def __init__(self, function: EmulatedFunction, root: Path) -> None:
        self.id = f"ta-emu{next(_container_ids):06d}"
        self.function = function
        self.root = root
        self.inputs: dict[str, InputContext] = {}
        self.stopped = False
        self.draining = False  # stop_fetching_inputs()
        self.views: dict[str, VolumeView] = {}
        for mount, (store, read_only) in function.volumes.items():
            self.views[mount] = VolumeView(store, root / mount.strip("/"), read_only=read_only)

    def view_of(self, volume_name: str) -> VolumeView | None:
        for view in self.views.values():
            if view.store.name == volume_name:
                return view
        return None

    def path(self, container_path: str) -> Path:
        """The real path of `container_path` (e.g. "/scratch/job/out.png") in this container."""
        for mount, view in sorted(self.views.items(), key=lambda mv: -len(mv[0])):
            prefix = mount.rstrip("/")
            if container_path == prefix or container_path.startswith(prefix + "/"):
                return view.root / container_path[len(prefix) :].lstrip("/")
        raise FileNotFoundError(f"{container_path} is not on a volume mounted in {self.id}")

    @property
    def free(self) -> bool:
        return (
            not self.stopped and not self.draining and (len(self.inputs) < self.function.max_inputs)
        )


class EmulatedFunction:
    """A deployed function with its slots, input queue and optional schedule."""

    def __init__(
        self,
        server: ModalEmulator,
        name: str,
        impl: Callable[..., Any],
        *,
        max_containers: int,
        max_inputs: int,
        volumes: dict[str, tuple[VolumeStore, bool]],
        schedule: modal.Period | modal.Cron | None,
        reschedule_on_stop: bool = True,
    ) -> None:
        self.server = server
        self.name = name
        self.impl = impl
        self.max_containers = max_containers
        self.max_inputs = max_inputs
        self.volumes = volumes
        self.schedule = schedule
        self.reschedule_on_stop = reschedule_on_stop
        self.pending: deque[EmulatedFunctionCall] = deque()
        self.containers: list[Container] = []
        self.calls: list[EmulatedFunctionCall] = []
        self.lock = threading.RLock()
        self.next_fire: float | None = None
        self.containers_started = 0

    # ---- the SDK surface ------------------------------------------------------------

    def spawn(self, *args: Any, **kwargs: Any) -> EmulatedFunctionCall:
        call = EmulatedFunctionCall(self, args, kwargs)
        with self.server.ledger.rpc("function", self.name, "spawn"):
            with self.lock:
                self.calls.append(call)
                self.pending.append(call)
            self.server.register_call(call)
        if self.server.mode == "threads":
            self.dispatch()
        return call

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """The body in this process, outside any container (`Function.local`)."""
        return self.impl(*args, **kwargs)

    def get_current_stats(self) -> CurrentStats:
        with self.server.ledger.rpc("function", self.name, "get_current_stats"), self.lock:
            runners = sum(1 for c in self.containers if not c.stopped)
            return CurrentStats(backlog=len(self.pending), num_total_runners=runners)

    # ---- scheduling -----------------------------------------------------------------

    def _container_for_next(self) -> Container | None:
        """A container with a free slot, starting one if allowed (lock held)."""
        self.containers = [c for c in self.containers if not c.stopped]
        for container in self.containers:
            if container.free:
                return container
        if len(self.containers) < self.max_containers:
            self.containers_started += 1
            root = self.server.root / "containers" / f"{self.name}-{self.containers_started}"
            container = Container(self, root)
            self.containers.append(container)
            return container
        return None

    def _claim(self) -> tuple[EmulatedFunctionCall, Container, InputContext] | None:
        with self.lock:
            while self.pending and self.pending[0].status == CANCELLED:
                self.pending.popleft()
            if not self.pending:
                return None
            container = self._container_for_next()
            if container is None:
                return None
            call = self.pending.popleft()
            call.status = RUNNING
            call.attempts += 1
            ctx = InputContext(container, call.object_id)
            container.inputs[call.object_id] = ctx
            return call, container, ctx

    def dispatch(self) -> None:
        """Threads mode: start inputs while there are pending calls and free slots."""
        while (claimed := self._claim()) is not None:
            call, container, ctx = claimed
            thread = threading.Thread(
                target=contextvars.Context().run,
                args=(self._run, call, container, ctx),
                name=f"{self.name}:{call.object_id}",
                daemon=True,
            )
            self.server.threads.append(thread)
            thread.start()

    def step(self) -> bool:
        """Manual mode: run the oldest pending input to completion here; False if none."""
        claimed = self._claim()
        if claimed is None:
            return False
        context = contextvars.Context()
        context.run(self._run, *claimed)
        return True

    def _run(self, call: EmulatedFunctionCall, container: Container, ctx: InputContext) -> None:
        token = _current.set(ctx)
        try:
            result = self.impl(*call.args, **call.kwargs)
            check_cancelled()  # a cancel that arrived during the last instructions
        except ContainerStopped as exc:
            if self.reschedule_on_stop:
                with self.lock:
                    call.status = PENDING
                    self.pending.append(call)
            else:
                call._finish(FAILED, exc=exc)
        except InputCancellation:
            call._finish(CANCELLED)
        except BaseException as exc:  # noqa: BLE001 - the input's outcome, kept on the call
            call._finish(FAILED, exc=exc)
            self.server.failures.append((call, exc))
        else:
            call._finish(SUCCEEDED, result)
        finally:
            _current.reset(token)
            with self.lock:
                container.inputs.pop(call.object_id, None)
                if container.draining and not container.inputs and not container.stopped:
                    self._stop_container(container, graceful=True)
        if self.server.mode == "threads":
            self.dispatch()

    # ---- cancel, crash, drain -------------------------------------------------------

    def cancel(self, call: EmulatedFunctionCall, *, terminate_containers: bool) -> None:
        with self.lock:
            if call.status == PENDING:
                call._finish(CANCELLED)
                return
            if call.status != RUNNING:
                return
            container = next(
                (c for c in self.containers if call.object_id in c.inputs and not c.stopped),
                None,
            )
            if container is None:
                return
            own = container.inputs[call.object_id]
            own.deliver(InputCancellation("Input was cancelled by user"))
            if self.max_inputs > 1 or terminate_containers:
                for call_id, sibling in container.inputs.items():
                    if call_id != call.object_id:
                        sibling.deliver(ContainerStopped("container stopped by a cancel"))
                self._stop_container(container, graceful=False)

    def crash(self, container: Container) -> None:
        """The container dies (OOM, preemption): every input stops mid-message."""
        with self.lock:
            for sibling in container.inputs.values():
                sibling.deliver(ContainerStopped("container crashed"))
            self._stop_container(container, graceful=False)

    def drain(self, container: Container) -> None:
        """`stop_fetching_inputs()`: no new inputs; stops once the running ones finish."""
        with self.lock:
            container.draining = True
            if not container.inputs:
                self._stop_container(container, graceful=True)

    def _stop_container(self, container: Container, *, graceful: bool) -> None:
        container.stopped = True
        for view in container.views.values():
            if graceful:
                view.publish()
        # A killed container's files go with it; a graceful one has committed.

    def stop_all(self) -> None:
        with self.lock:
            for container in self.containers:
                if not container.stopped and not container.inputs:
                    self._stop_container(container, graceful=True)

    # ---- schedule ---------------------------------------------------------------------

    def first_fire(self, deploy_time: float) -> None:
        self.next_fire = None if self.schedule is None else self._after(deploy_time)

    def _after(self, when: float) -> float:
        assert self.schedule is not None
        proto = self.schedule.proto_message
        if proto.HasField("period"):
            p = proto.period
            seconds = p.seconds + 60 * p.minutes + 3600 * p.hours + 86400 * (p.days + 7 * p.weeks)
            if p.months or p.years or seconds <= 0:
                raise NotImplementedError("emulated Period: months/years are not modelled")
            return when + seconds
        return next_cron_time(proto.cron.cron_string, when)


def _cron_field(spec: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in spec.split(","):
        step = 1
        if "/" in part:
            part, step_s = part.split("/")
            step = int(step_s)
        if part == "*":
            lo, hi = low, high
        elif "-" in part:
            lo_s, hi_s = part.split("-")
            lo, hi = int(lo_s), int(hi_s)
        else:
            lo = hi = int(part)
        values.update(range(lo, hi + 1, step))
    return values


def next_cron_time(cron: str, after: float) -> float:
    """The first UTC minute strictly after `after` matching a 5-field cron string."""
    minute, hour, dom, month, dow = cron.split()
    minutes = _cron_field(minute, 0, 59)
    hours = _cron_field(hour, 0, 23)
    doms = _cron_field(dom, 1, 31)
    months = _cron_field(month, 1, 12)
    dows = {d % 7 for d in _cron_field(dow, 0, 7)}
    both_restricted = dom != "*" and dow != "*"

    def day_matches(dom_ok: bool, dow_ok: bool) -> bool:
        # cron(5): when both day fields are restricted, either one matching is enough.
        return (dom_ok or dow_ok) if both_restricted else (dom_ok and dow_ok)

    t = (int(after) // 60 + 1) * 60
    for _ in range(366 * 24 * 60):
        at = datetime.fromtimestamp(t, UTC)
        if (
            at.minute in minutes
            and at.hour in hours
            and at.month in months
            and day_matches(at.day in doms, (at.isoweekday() % 7) in dows)
        ):
            return float(t)
        t += 60
    raise ValueError(f"cron {cron!r} never fires")


def wait_for_threads(threads: list[threading.Thread], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    for thread in list(threads):
        thread.join(max(0.0, deadline - time.monotonic()))
