"""Everything a stage needs, built once per process (per container on Modal).

`Deps` is arq's `ctx`, typed. Stages take it as an argument and import no backend, so the
same stage code runs on the local backend and on Modal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from app.core.config import Settings
from app.core.models import Job, Stage
from app.store.backends import KV, Backend, Queue, open_backend
from app.store.deliveries import DeliveryStore
from app.store.intakes import PendingIntakes
from app.store.jobs import JobStore, slot_hint_trust_s
from app.store.keys import queue_name
from app.store.parallel import is_concurrent
from app.store.templates import TemplateStore
from app.store.tenants import TenantRegistry

if TYPE_CHECKING:
    from app.adapters.comfy.catalog import CatalogStore
    from app.adapters.comfy.client import ComfyClient
    from app.adapters.net.safe_client import SafeHttpClient
    from app.adapters.storage.base import ObjectStore

Waker = Callable[[Stage], None]
CancelHook = Callable[[Job], None]


def _no_wake(stage: Stage) -> None:
    """Local workers poll their queues; nothing to wake."""


def no_cancel_hook(job: Job) -> None:
    """Locally the render stage's cooperative interrupt is all there is."""


def restart_request_path(settings: Settings) -> Path:
    """The file a render worker writes to ask `dev`'s supervisor to restart ComfyUI."""
    return settings.data_dir / "comfyui.restart"


def _nothing() -> None:
    """Locally the scratch folder is an ordinary folder: nothing to commit or reload."""


def _no_call_id() -> str | None:
    return None


def _none_waiting(stage: Stage) -> int:
    """Local workers are always running: no consumer call is ever waiting to start."""
    return 0


@dataclass
class Deps:
    """Shared clients and stores; cheap to build, heavy parts built on first use."""

    settings: Settings
    backend: Backend
    clock: Callable[[], float] = time.time
    #: Called after a message is put on a stage's queue (Modal: spawn the consumer).
    waker: Waker = _no_wake
    #: Called after a job is cancelled (Modal: cancel the render's FunctionCall).
    on_cancel: CancelHook = no_cancel_hook
    comfy_url: str | None = None
    #: Modal: commit / reload the scratch Volume so other containers see the files.
    scratch_commit: Callable[[], None] = _nothing
    scratch_reload: Callable[[], None] = _nothing
    #: Modal: the FunctionCall id of the running render, so cancel can stop it.
    current_call_id: Callable[[], str | None] = _no_call_id
    #: The node set the catalog must come from: on Modal the deploy's pinned version, so a
    #: catalog published by another deploy is never trusted; locally "" (ComfyUI may change).
    catalog_version: str = ""
    #: Modal: consumer calls of a stage already waiting to start (the sweep wakes fewer).
    waiting_calls: Callable[[Stage], int] = _none_waiting
    #: Modal: renders that can run at once (the sweep wakes render up to this many times).
    render_parallel: int = 1
    #: Whether intake may ask ComfyUI for the node catalog when none is published. Locally
    #: no render container publishes it, so intake does; the Modal wiring turns this off.
    catalog_from_comfy: bool = True
    #: Modal: retire this container (its ComfyUI is stuck). None: ask `dev`'s supervisor,
    #: which restarts ComfyUI if it manages it (`renderer_stuck`).
    on_renderer_stuck: Callable[[str], None] | None = None
    #: Backpressure's last queue-length readings: stage -> (when, length).
    backlog_seen: dict[Stage, tuple[float, int]] = field(default_factory=dict)
    _queues: dict[Stage, Queue] = field(default_factory=dict)

    @cached_property
    def jobs(self) -> JobStore:
        # Trusted hints spare a floor read: a round trip on Modal, a cheap query locally,
        # where the stamps would only make every hint record bigger.
        trust = (
            slot_hint_trust_s(self.settings.job_retention_s) if is_concurrent(self.backend) else 0.0
        )
        return JobStore(self.backend, self.clock, hint_trust_s=trust)

    @cached_property
    def tenants(self) -> TenantRegistry:
        # Remembered keys only where each lookup is a round trip (Modal); see tenants.py.
        ttl = self.settings.auth_cache_ttl_s if is_concurrent(self.backend) else 0.0
        return TenantRegistry(self.backend, self.clock, cache_ttl_s=ttl)

    @cached_property
    def templates(self) -> TemplateStore:
        return TemplateStore(self.backend)

    @cached_property
    def deliveries(self) -> DeliveryStore:
        return DeliveryStore(self.backend)

    @cached_property
    def intakes(self) -> PendingIntakes:
        return PendingIntakes(self.backend)

    @cached_property
    def catalog(self) -> CatalogStore:
        from app.adapters.comfy.catalog import CATALOG_DICT, CatalogStore

        return CatalogStore(self.backend.kv(CATALOG_DICT))

    @cached_property
    def objects(self) -> ObjectStore:
        from app.adapters.storage import open_store

        return open_store(self.settings)

    @cached_property
    def http(self) -> SafeHttpClient:
        from app.adapters.net.policy import UrlPolicy
        from app.adapters.net.safe_client import SafeHttpClient

        return SafeHttpClient(UrlPolicy.from_settings(self.settings))

    @cached_property
    def comfy(self) -> ComfyClient:
        from app.adapters.comfy.client import ComfyClient

        return ComfyClient(
            self.comfy_url or self.settings.comfyui_url,
            connect_timeout_s=self.settings.comfyui_connect_timeout_s,
            interrupt_grace_s=self.settings.render_interrupt_grace_s,
        )

    def renderer_stuck(self, reason: str) -> None:
        """ComfyUI holds a prompt it was told to stop: have the renderer restarted."""
        if self.on_renderer_stuck is not None:
            self.on_renderer_stuck(reason)
            return
        path = restart_request_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reason)

    def queue(self, stage: Stage) -> Queue:
        """The queue feeding `stage`."""
        if stage not in self._queues:
            self._queues[stage] = self.backend.queue(queue_name(stage))
        return self._queues[stage]

    def kv(self, name: str) -> KV:
        """The dict called `name` (the backend hands out one handle per name)."""
        return self.backend.kv(name)


def build_deps(
    settings: Settings,
    *,
    waker: Waker | None = None,
    on_cancel: CancelHook | None = None,
    comfy_url: str | None = None,
    backend: Backend | None = None,
) -> Deps:
    """Deps for this process from the settings (on Modal, cancel also stops the render)."""
    if on_cancel is None:
        from app.engine.render_cancel import render_cancel_hook

        on_cancel = render_cancel_hook(settings)
    return Deps(
        settings=settings,
        backend=backend or open_backend(settings),
        waker=waker or _no_wake,
        on_cancel=on_cancel,
        comfy_url=comfy_url,
    )
