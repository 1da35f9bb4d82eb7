"""`ModalEmulator`: the emulated Modal workspace, and `install()` to route the SDK to it."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import modal
import modal.dict
import modal.experimental
from modal.exception import NotFoundError

from tests.modal_emulator.clock import SimClock
from tests.modal_emulator.context import check_cancelled, current_input
from tests.modal_emulator.dict import DictStore, EmulatedDict
from tests.modal_emulator.functions import (
    Container,
    EmulatedFunction,
    EmulatedFunctionCall,
    wait_for_threads,
)
from tests.modal_emulator.ledger import DEFAULT_LATENCY_S, Faults, Ledger
from tests.modal_emulator.queue import EmulatedQueue, QueueStore
from tests.modal_emulator.sdk import bind_static
from tests.modal_emulator.volume import EmulatedVolume, VolumeStore

#: The SDK's own `Dict.objects.delete`, kept before `install` patches it, to bind calls to.
_REAL_DICT_DELETE = modal.dict.DictManager.delete


def volume_name(vol: Any) -> tuple[str, bool]:
    """The name and read-only flag of a real `modal.Volume` handle (lazy, offline)."""
    from modal._utils.async_utils import synchronizer

    impl = synchronizer._translate_in(vol)  # type: ignore[no-untyped-call]
    name = getattr(impl, "_name", None)
    if not name:
        raise KeyError(f"cannot tell which volume {vol!r} is")
    return str(name), bool(getattr(impl, "_read_only", False))


def function_key(fn: Any) -> str:
    """The name a real `modal.Function` is registered under ("intake", "Render.run")."""
    from modal._utils.async_utils import synchronizer

    impl = synchronizer._translate_in(fn)  # type: ignore[no-untyped-call]
    tag = getattr(impl, "_tag", "") or ""
    if tag:
        return str(tag)
    rep = str(getattr(impl, "_rep", ""))
    if rep.startswith("Method(") and rep.endswith(")"):
        return rep[len("Method(") : -1]
    raise KeyError(f"cannot tell which function {rep or fn!r} is")


class ModalEmulator:
    """One emulated Modal workspace: named Dicts, Queues, Volumes, functions and a clock."""

    def __init__(
        self,
        *,
        clock: SimClock | None = None,
        latency_s: float = DEFAULT_LATENCY_S,
        latency_per_op: dict[str, float] | None = None,
        real_latency_scale: float = 0.0,
        faults: Faults | None = None,
        hang_bound_s: float = 0.05,
        mode: str = "threads",
        root: Path | None = None,
        commit_reloads: bool = True,
        seed: int = 0,
    ) -> None:
        if mode not in ("threads", "manual"):
            raise ValueError("mode is 'threads' or 'manual'")
        self.clock = clock or SimClock()
        self.ledger = Ledger(
            self.clock,
            latency_s=latency_s,
            latency_per_op=latency_per_op,
            real_latency_scale=real_latency_scale,
        )
        self.faults = faults or Faults(seed=seed)
        self.hang_bound_s = hang_bound_s
        self.mode = mode
        self.commit_reloads = commit_reloads
        self.seed = seed
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="modal-emulator-")
            root = Path(self._tmp.name)
        self.root = root
        self.deploy_time = self.clock.now()
        self._lock = threading.Lock()
        self.dicts: dict[tuple[str | None, str], DictStore] = {}
        self.queues: dict[tuple[str | None, str], QueueStore] = {}
        self.volumes: dict[tuple[str | None, str], VolumeStore] = {}
        self.functions: dict[str, EmulatedFunction] = {}
        self._calls: dict[str, EmulatedFunctionCall] = {}
        self.threads: list[threading.Thread] = []
        #: (call, exception) for every input that raised.
        self.failures: list[tuple[EmulatedFunctionCall, BaseException]] = []

    # ---- named objects ------------------------------------------------------------------

    def find_dict(self, name: str, env: str | None, create: bool) -> DictStore | None:
        with self._lock:
            key = (env, name)
            if key not in self.dicts and create:
                self.dicts[key] = DictStore(name, self.ledger, self.faults, seed=self.seed)
            return self.dicts.get(key)

    def find_queue(self, name: str, env: str | None, create: bool) -> QueueStore | None:
        with self._lock:
            key = (env, name)
            if key not in self.queues and create:
                self.queues[key] = QueueStore(
                    name, self.ledger, self.faults, hang_bound_s=self.hang_bound_s
                )
            return self.queues.get(key)

    def find_volume(self, name: str, env: str | None, create: bool) -> VolumeStore | None:
        with self._lock:
            key = (env, name)
            if key not in self.volumes and create:
                self.volumes[key] = VolumeStore(name, self.ledger)
            return self.volumes.get(key)

    def dict_from_name(self, name: str, **kwargs: Any) -> EmulatedDict:
        """Stands in for `modal.Dict.from_name` (arguments bound to the real signature)."""
        bind_static(modal.Dict.from_name, (name,), kwargs)
        return EmulatedDict(
            self,
            name,
            environment_name=kwargs.get("environment_name"),
            create_if_missing=bool(kwargs.get("create_if_missing", False)),
        )

    def dict_delete(self, name: str, **kwargs: Any) -> None:
        """Stands in for `modal.Dict.objects.delete` (one round trip; see `dict.py`)."""
        bind_static(_REAL_DICT_DELETE, (None, name), kwargs)  # `None` for its manager
        with self.ledger.rpc("dict", name, "delete"), self._lock:
            store = self.dicts.pop((kwargs.get("environment_name"), name), None)
            if store is None:
                if not kwargs.get("allow_missing", False):
                    raise NotFoundError(f"Dict '{name}' not found")
                return
            store.deleted = True

    def queue_from_name(self, name: str, **kwargs: Any) -> EmulatedQueue:
        """Stands in for `modal.Queue.from_name`."""
        bind_static(modal.Queue.from_name, (name,), kwargs)
        return EmulatedQueue(
            self,
            name,
            environment_name=kwargs.get("environment_name"),
            create_if_missing=bool(kwargs.get("create_if_missing", False)),
        )

    def volume_from_name(self, name: str, **kwargs: Any) -> EmulatedVolume:
        """Stands in for `modal.Volume.from_name`."""
        bind_static(modal.Volume.from_name, (name,), kwargs)
        return EmulatedVolume(
            self,
            name,
            environment_name=kwargs.get("environment_name"),
            create_if_missing=bool(kwargs.get("create_if_missing", False)),
        )

    # ---- functions ----------------------------------------------------------------------

    def function(
        self,
        name: str,
        impl: Callable[..., Any],
        *,
        max_containers: int = 1,
        max_inputs: int = 1,
        volumes: dict[str, Any] | None = None,
        schedule: modal.Period | modal.Cron | None = None,
        reschedule_on_stop: bool = True,
    ) -> EmulatedFunction:
        """Deploy `impl` as function `name` with Modal's container and input limits.

        `volumes` maps mount paths to emulated volumes or to the app's real `modal.Volume`
        handles (matched by name), as in `@app.function(volumes=...)`.
        """
        emulated = {mount: self.as_emulated(vol) for mount, vol in (volumes or {}).items()}
        mounts = {mount: (vol.store(), vol._read_only) for mount, vol in emulated.items()}
        fn = EmulatedFunction(
            self,
            name,
            impl,
            max_containers=max_containers,
            max_inputs=max_inputs,
            volumes=mounts,
            schedule=schedule,
            reschedule_on_stop=reschedule_on_stop,
        )
        fn.first_fire(self.deploy_time)
        self.functions[name] = fn
        return fn

    def as_emulated(self, vol: Any) -> EmulatedVolume:
        """An emulated volume for `vol` (already emulated, or a real handle by name)."""
        if isinstance(vol, EmulatedVolume):
            return vol
        name, read_only = volume_name(vol)
        return EmulatedVolume(
            self, name, environment_name=None, create_if_missing=True, read_only=read_only
        )

    def register_call(self, call: EmulatedFunctionCall) -> None:
        with self._lock:
            self._calls[call.object_id] = call

    def call_from_id(self, function_call_id: str, client: Any = None) -> EmulatedFunctionCall:
        """`FunctionCall.from_id`: lazy, no round trip; unknown ids fail on first use."""
        bind_static(modal.FunctionCall.from_id, (function_call_id,), {"client": client})
        with self._lock:
            call = self._calls.get(function_call_id)
        if call is None:
            raise NotFoundError(f"FunctionCall {function_call_id} not found")
        return call

    def step(self) -> bool:
        """Manual mode: run one pending input (oldest function first); False if none ran."""
        return any(fn.step() for fn in list(self.functions.values()))

    def run_until_idle(self, max_steps: int = 100_000) -> int:
        """Manual mode: run pending inputs until none is left; how many ran."""
        ran = 0
        while ran < max_steps and self.step():
            ran += 1
        return ran

    def advance(self, seconds: float, *, run: bool = True) -> list[EmulatedFunctionCall]:
        """Move the clock, firing every schedule due on the way (in time order)."""
        target = self.clock.now() + seconds
        fired: list[EmulatedFunctionCall] = []
        while True:
            due = [f for f in self.functions.values() if f.next_fire is not None]
            nxt = min(due, key=lambda f: f.next_fire or 0.0, default=None)
            if nxt is None or nxt.next_fire is None or nxt.next_fire > target:
                break
            when = nxt.next_fire
            self.clock.advance_to(when)
            nxt.next_fire = nxt._after(when)
            fired.append(nxt.spawn())
            if run and self.mode == "manual":
                self.run_until_idle()
        self.clock.advance_to(target)
        return fired

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Threads mode: wait until every started input thread has finished."""
        while True:
            alive = [t for t in self.threads if t.is_alive()]
            if not alive:
                return
            wait_for_threads(alive, timeout_s)
            if any(t.is_alive() for t in alive):
                raise TimeoutError(f"{len(alive)} emulated inputs still running")

    @contextmanager
    def container(
        self, volumes: dict[str, Any] | None = None, *, name: str = "adhoc"
    ) -> Iterator[Container]:
        """Run the block as one input of a fresh container (its own volume views)."""
        fn = self.function(f"{name}-{len(self.functions)}", lambda: None, volumes=volumes)
        with fn.lock:
            fn.containers_started += 1
            box = Container(fn, self.root / "containers" / f"{fn.name}-1")
            fn.containers.append(box)
        from tests.modal_emulator.context import InputContext, _current

        ctx = InputContext(box, f"fc-adhoc-{fn.name}")
        box.inputs[ctx.call_id] = ctx
        token = _current.set(ctx)
        try:
            yield box
        finally:
            _current.reset(token)
            box.inputs.pop(ctx.call_id, None)
            del self.functions[fn.name]

    @staticmethod
    def checkpoint() -> None:
        """Deliver a pending cancellation to the current input (call from long loops)."""
        check_cancelled()

    def close(self) -> None:
        for fn in self.functions.values():
            fn.stop_all()
        if self._tmp is not None:
            self._tmp.cleanup()

    # ---- routing the real SDK here --------------------------------------------------------

    @contextmanager
    def install(self) -> Iterator[ModalEmulator]:
        """Patch the SDK entry points we use so they resolve to this emulator.

        `modal.Dict/Queue/Volume.from_name`, `modal.Dict.objects.delete`,
        `Volume.commit/reload` (for handles built before install, such as the app's
        module-level volumes), `Function.spawn`,
        `Function.get_current_stats`, `FunctionCall.from_id`, `modal.is_local`,
        `modal.current_function_call_id` and `modal.experimental.stop_fetching_inputs`. A real
        `modal.Function` is routed by its name (`function_key`) to the function registered
        here under that name.

        Import the Modal app *before* installing: its decorators check that volumes are real
        `modal.Volume` objects.
        """
        emu = self

        def spawn(fn: Any, *args: Any, **kwargs: Any) -> EmulatedFunctionCall:
            return emu.functions[function_key(fn)].spawn(*args, **kwargs)

        def stats(fn: Any) -> Any:
            return emu.functions[function_key(fn)].get_current_stats()

        def stop_fetching_inputs() -> None:
            ctx = current_input()
            if ctx is None:
                raise RuntimeError("stop_fetching_inputs() called outside a Modal container")
            ctx.container.function.drain(ctx.container)

        def current_call_id() -> str | None:
            ctx = current_input()
            return None if ctx is None else ctx.call_id

        def commit(vol: Any) -> None:
            emu.as_emulated(vol).commit()

        def reload(vol: Any) -> None:
            emu.as_emulated(vol).reload()

        patches: list[Any] = [
            mock.patch.object(modal.Volume, "commit", commit),
            mock.patch.object(modal.Volume, "reload", reload),
            mock.patch.object(modal.Dict, "from_name", staticmethod(emu.dict_from_name)),
            # `Dict.objects` builds a new manager on each access: patch their class.
            mock.patch.object(
                modal.dict.DictManager, "delete", lambda _manager, *a, **k: emu.dict_delete(*a, **k)
            ),
            mock.patch.object(modal.Queue, "from_name", staticmethod(emu.queue_from_name)),
            mock.patch.object(modal.Volume, "from_name", staticmethod(emu.volume_from_name)),
            mock.patch.object(modal.FunctionCall, "from_id", staticmethod(emu.call_from_id)),
            mock.patch.object(modal.Function, "spawn", spawn),
            mock.patch.object(modal.Function, "get_current_stats", stats),
            mock.patch.object(modal, "is_local", lambda: current_input() is None),
            mock.patch.object(modal, "current_function_call_id", current_call_id),
            mock.patch.object(modal.experimental, "stop_fetching_inputs", stop_fetching_inputs),
        ]
        with ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            yield self
