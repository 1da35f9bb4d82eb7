"""The real Modal app (`app.deploy.modal.app`) running on the emulator.

Every function is registered with its own body, taken from the decorated `modal.Function`
(`_raw_f`, what Modal's container entrypoint calls) or from the `Render` class's user
methods, with the decorators' scaling and volumes. `spawn` (the app's `wake`) routes into
emulated containers; the scheduled functions fire as `emu.advance()` moves the clock.

Only what cannot run here is replaced, each at its edge:

* `container_deps` runs unchanged, but its once-per-process cache is keyed per emulated
  container (on Modal each container is its own process), and each container's `Deps`
  gets that container's view of the scratch volume as its data folder, the emulator's
  clock and the shared in-memory object store (S3 stands in for nothing here);
* the render container's ComfyUI process: `Render.start_comfy` is skipped (no GPU, no
  ComfyUI install) and the container is attached to a ComfyUI double's URL, or given a
  fake `ComfyClient` (`comfy=`) for simulations where rendering must be instant.

Import this module before `ModalEmulator.install()`: it imports the app, whose decorators
need the real SDK.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import modal
from modal._utils.async_utils import synchronizer

import app.deploy.modal.app as modal_app
from app.adapters.storage.memory import MemoryStore
from app.core.config import Settings
from app.deploy.modal import comfy_process
from app.deploy.modal import options as opts
from app.engine.deps import Deps
from tests.modal_emulator.context import current_input
from tests.modal_emulator.emulator import ModalEmulator
from tests.modal_emulator.functions import EmulatedFunction

#: The per-process cache key `container_deps` uses.
OUTSIDE = "outside"


def raw_body(fn: Any) -> Callable[..., Any]:
    """The undecorated body of an `@app.function` (what Modal's entrypoint runs)."""
    body: Callable[..., Any] = synchronizer._translate_in(fn)._raw_f  # type: ignore[no-untyped-call]
    return body


def render_user_class() -> type:
    """The user class behind `@app.cls` `Render`."""
    impl = synchronizer._translate_in(modal_app.Render)  # type: ignore[no-untyped-call]
    cls: type = impl._get_user_cls()
    return cls


def _method(cls: type, name: str) -> Callable[..., Any]:
    member = cls.__dict__[name]
    raw = getattr(member, "_get_raw_f", None)
    func: Callable[..., Any] = raw() if raw is not None else member
    return func


class _PerContainer(dict[str, Any]):
    """`container_deps`'s cache, one entry per emulated container (a process on Modal)."""

    def __init__(self, adopt: Callable[[Any], None]) -> None:
        super().__init__()
        self._adopt = adopt
        self._by: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _where() -> str:
        ctx = current_input()
        return OUTSIDE if ctx is None else ctx.container.id

    def __contains__(self, key: object) -> bool:
        return (self._where(), str(key)) in self._by

    def __getitem__(self, key: str) -> Any:
        return self._by[(self._where(), key)]

    def __setitem__(self, key: str, value: Any) -> None:
        self._adopt(value)
        with self._lock:
            self._by[(self._where(), key)] = value

    def containers(self) -> int:
        return len({where for where, _ in self._by})


@dataclass
class _Launch:
    url: str


class _AttachedComfy:
    """Stands in for `ComfyProcess` after `start_comfy`: a ComfyUI already listening."""

    def __init__(self, url: str) -> None:
        self.launch = _Launch(url)

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        """Nothing to stop: the double belongs to the test."""


class ModalApp:
    """The app's functions registered on `emu`; use inside `with harness.installed():`."""

    def __init__(
        self,
        emu: ModalEmulator,
        settings: Settings,
        *,
        comfy_url: str = "http://127.0.0.1:9",
        comfy: Callable[[], Any] | None = None,
        adopt: Callable[[Deps], None] | None = None,
    ) -> None:
        self.emu = emu
        self.settings = settings
        self.comfy_url = comfy_url
        self.comfy_factory = comfy
        self.extra_adopt = adopt
        self.objects = MemoryStore(clock=emu.clock.now)
        self.cache = _PerContainer(self._adopt)
        self.functions: dict[str, EmulatedFunction] = {}
        self._renderers: dict[str, Any] = {}  # container id -> its Render instance
        self.render_cls = render_user_class()
        self._api: Any = None

    # ---- deps of one container ---------------------------------------------------------

    def _adopt(self, deps: Deps) -> None:
        ctx = current_input()
        data_dir = self.emu.root / OUTSIDE / opts.CONTAINER_DATA_DIR.strip("/")
        if ctx is not None:
            try:
                data_dir = ctx.container.path(opts.CONTAINER_DATA_DIR)
            except FileNotFoundError:  # the ingress mounts no scratch volume
                data_dir = ctx.container.root / "private"
        data_dir.mkdir(parents=True, exist_ok=True)
        deps.settings = self.settings.model_copy(update={"data_dir": data_dir})
        deps.clock = self.emu.clock.now
        deps.objects = self.objects
        if self.comfy_factory is not None:
            deps.comfy = self.comfy_factory()
        if self.extra_adopt is not None:
            self.extra_adopt(deps)

    def deps(self) -> Deps:
        """The current container's deps (outside any container: the harness's own)."""
        deps: Deps = modal_app.container_deps()
        return deps

    # ---- registration --------------------------------------------------------------------

    def _register(self) -> None:
        cpu, render = modal_app.CPU_SCALING, modal_app.RENDER_SCALING
        cpu_volumes = modal_app.CPU_OPTIONS["volumes"]
        for stage, fn in modal_app.CPU_CONSUMERS.items():
            self.functions[stage.value] = self.emu.function(
                stage.value,
                raw_body(fn),
                max_containers=cpu.max_containers,
                max_inputs=cpu.max_inputs,
                volumes=cpu_volumes,
            )
        self.functions["Render.run"] = self.emu.function(
            "Render.run",
            self._render_run,
            max_containers=render.max_containers,
            max_inputs=render.max_inputs,
            volumes=modal_app.RENDER_OPTIONS["volumes"],
        )
        schedules: dict[str, tuple[Any, modal.Cron | modal.Period]] = {
            "sweep": (modal_app.sweep, modal.Cron("* * * * *")),
            "fail_stale": (
                modal_app.fail_stale,
                modal.Period(seconds=self.settings.modal_fail_stale_every_s),
            ),
            "cleanup": (modal_app.cleanup, modal.Cron(self.settings.modal_cleanup_cron)),
            "refresh_durable": (
                modal_app.refresh_durable,
                modal.Period(seconds=self.settings.modal_durable_refresh_every_s),
            ),
        }
        for name, (fn, schedule) in schedules.items():
            self.functions[name] = self.emu.function(
                name, raw_body(fn), volumes=cpu_volumes, schedule=schedule
            )

    def _render_run(self) -> int:
        """One `Render.run` input: the container's instance (built on its first input)."""
        ctx = current_input()
        assert ctx is not None
        key = ctx.container.id
        instance: Any = self._renderers.get(key)
        if instance is None:
            instance = object.__new__(self.render_cls)
            instance.comfy = _AttachedComfy(self.comfy_url)
            _method(self.render_cls, "attach")(instance)
            self._renderers[key] = instance
        result: int = _method(self.render_cls, "run")(instance)
        return result

    # ---- the ingress -----------------------------------------------------------------

    def asgi(self) -> Any:
        """The app's `api` body (the FastAPI app), built in an ingress container."""
        if self._api is None:
            with self.emu.container(name="api"):
                self._api = raw_body(modal_app.api)()
        return self._api

    def publish_catalog(self, object_info: dict[str, Any]) -> None:
        """What a render container's `attach` does, without waiting for one to start."""
        modal_app._publish_catalog(self.deps(), object_info)

    # ---- install ---------------------------------------------------------------------

    @contextmanager
    def installed(self) -> Iterator[ModalApp]:
        """Route the SDK to the emulator and the app's globals to this harness."""
        snapshot = opts.snapshot(self.settings)
        patches: list[Any] = [
            mock.patch.object(modal_app, "settings", self.settings),
            mock.patch.object(modal_app, "_deps", self.cache),
            mock.patch.object(modal_app, "SNAPSHOT", snapshot),
        ]
        if self.comfy_factory is not None:
            # No ComfyUI listens for a fake client: the health gate asks the fake instead.
            patches.append(mock.patch.object(comfy_process, "is_healthy", lambda url: True))
        with ExitStack() as stack:
            stack.enter_context(self.emu.install())
            for patch in patches:
                stack.enter_context(patch)
            self._register()
            yield self


def harness_settings(root: Path, **overrides: Any) -> Settings:
    """Settings of the Modal deployment under test (backend `modal`, a test app name)."""
    values: dict[str, Any] = {
        "backend": "modal",
        "modal_app_name": "emu-app",
        "data_dir": root / "data",
        "public_url": "http://127.0.0.1:9",
        "modal_memory_snapshot": False,
    }
    values.update(overrides)
    return Settings(**values)
