"""The local pipeline (`comfyui-saas dev`): stage worker processes, maintenance, ingress.

Each stage runs in its own worker processes (as many as the settings say) over the
SQLite backend; the ingress runs under uvicorn in the main process. On Ctrl-C the
workers finish the message in hand (up to a grace period) and exit; whatever is queued
stays in SQLite and runs on the next start. A job a killed worker was holding is handed
back to its stage at the next start, because no worker survives a restart.
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

from app.core.config import Settings
from app.core.errors import (
    ComfyUnavailable,
    RunnerError,
)
from app.core.logs import configure_logging, get_logger
from app.core.models import Stage
from app.engine.deps import Deps, build_deps

#: How long Ctrl-C waits for workers to finish the message in hand.
SHUTDOWN_GRACE_S = 20.0
SWEEP_INTERVAL_S = 1.0
FAIL_STALE_INTERVAL_S = 30.0
CLEANUP_INTERVAL_S = 3600.0
#: While ComfyUI is down the render worker leaves messages queued and checks again.
COMFY_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    stage: Stage
    index: int


def worker_specs(settings: Settings) -> list[WorkerSpec]:
    """One spec per worker process, from the settings' per-stage counts."""
    counts = {
        Stage.INTAKE: settings.local_intake_workers,
        Stage.FETCH: settings.local_fetch_workers,
        Stage.RENDER: settings.local_render_workers,
        Stage.UPLOAD: settings.local_upload_workers,
        Stage.NOTIFY: settings.local_notify_workers,
    }
    return [WorkerSpec(stage, i) for stage, n in counts.items() for i in range(n)]


def comfy_help(url: str) -> str:
    """What to tell a user whose ComfyUI is not reachable."""
    return (
        f"ComfyUI is not reachable at {url}.\n"
        "Start one (see https://github.com/comfyanonymous/ComfyUI#installing), e.g.\n"
        "    python main.py --listen 127.0.0.1 --port 8188      (add --cpu without a GPU)\n"
        "or point COMFYUI_SAAS_COMFYUI_URL at yours. Jobs wait in the render queue until "
        "it answers."
    )


def run_worker(settings: Settings, spec: WorkerSpec, stop: Event) -> None:
    """A worker process: drain its stage's queue until `stop` is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    configure_logging(settings.log_level, settings.log_json)
    deps = build_deps(settings)
    log = get_logger(stage=spec.stage.value, worker=spec.index, pid=os.getpid())
    log.info("worker_started")
    from app.stages import drain

    before_each = deps.comfy.health if spec.stage is Stage.RENDER else None
    while not stop.is_set():
        try:
            drain(
                spec.stage,
                deps,
                max_items=1,
                wait_s=settings.queue_poll_timeout_s,
                before_each=before_each,
            )
        except ComfyUnavailable:
            stop.wait(COMFY_RETRY_S)
        except Exception:
            log.exception("worker_loop_error")  # keep serving; the job itself was failed
            stop.wait(1.0)
    log.info("worker_stopped")


def run_maintenance(settings: Settings, stop: Event) -> None:
    """Sweep every second, fail_stale every 30 s, cleanup hourly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_json)
    from app.engine.maintenance import cleanup, fail_stale, sweep

    deps = build_deps(settings)
    log = get_logger(worker="maintenance")
    last_stale = last_cleanup = 0.0
    while not stop.wait(SWEEP_INTERVAL_S):
        try:
            sweep(deps)
            now = time.monotonic()
            if now - last_stale >= FAIL_STALE_INTERVAL_S:
                fail_stale(deps)
                last_stale = now
            if now - last_cleanup >= CLEANUP_INTERVAL_S:
                cleanup(deps)
                last_cleanup = now
        except Exception:
            log.exception("maintenance_error")


@contextmanager
def single_runner(data_dir: Path) -> Iterator[None]:
    """Refuse a second runner on the same data folder (both would recover each other's jobs)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "runner.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunnerError(f"another comfyui-saas dev is already running on {data_dir}") from exc
        yield


class Pipeline:
    """Worker and maintenance processes of the local pipeline."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = mp.get_context("spawn")  # no inherited sockets, locks or threads
        self.stop = self.ctx.Event()
        self.processes: list[mp.process.BaseProcess] = []

    def start(self) -> None:
        for spec in worker_specs(self.settings):
            self._spawn(run_worker, (self.settings, spec, self.stop), f"{spec.stage}-{spec.index}")
        self._spawn(run_maintenance, (self.settings, self.stop), "maintenance")

    def _spawn(self, target: Callable[..., None], args: tuple[object, ...], name: str) -> None:
        process = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        process.start()
        self.processes.append(process)

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self.stop.set()
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


def prepare(settings: Settings, deps: Deps) -> None:
    """Start-up checks and recovery, before any worker runs."""
    from app.engine.maintenance import recover_after_restart

    log = get_logger()
    try:
        stats = deps.comfy.health()
        version = stats.get("system", {}).get("comfyui_version", "?")
        log.info("comfyui_reachable", url=settings.comfyui_url, version=version)
    except ComfyUnavailable:
        print(comfy_help(settings.comfyui_url), flush=True)
        log.warning("comfyui_unreachable", url=settings.comfyui_url)
    recovered = recover_after_restart(deps)
    if recovered:
        log.warning("jobs_recovered_after_restart", count=recovered)


def listening_settings(settings: Settings, host: str, port: int) -> Settings:
    """Settings whose `public_url` follows `--host/--port`, unless it was set on purpose.

    The local store signs download links with `public_url`; a pipeline started on another
    port must not hand out links to the default one.
    """
    default_url = f"http://{settings.host}:{settings.port}"
    if settings.public_url != default_url:
        return settings
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown_host:  # an IPv6 literal
        shown_host = f"[{shown_host}]"
    return settings.model_copy(
        update={"host": host, "port": port, "public_url": f"http://{shown_host}:{port}"}
    )


def run_dev(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Run the whole local pipeline until Ctrl-C."""
    import uvicorn

    from app.api.ingress import create_app

    settings = listening_settings(settings, host or settings.host, port or settings.port)
    configure_logging(settings.log_level, settings.log_json)
    with single_runner(settings.data_dir):
        deps = build_deps(settings)
        prepare(settings, deps)
        pipeline = Pipeline(settings)
        pipeline.start()
        log = get_logger()
        log.info(
            "pipeline_started", workers=len(pipeline.processes), data_dir=str(settings.data_dir)
        )
        config = uvicorn.Config(
            create_app(deps),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
        )
        try:
            uvicorn.Server(config).run()
        finally:
            log.info("pipeline_stopping")
            pipeline.shutdown()
            log.info("pipeline_stopped")
