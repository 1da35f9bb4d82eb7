"""The local pipeline (`comfyui-saas dev`): stage worker processes, maintenance, ingress.

Each stage runs in its own worker processes (as many as the settings say) over the
SQLite backend, plus one maintenance process; the ingress runs under uvicorn in a thread
of the main process, whose main thread supervises the children:

* A child that exits or is killed is started again, after a back-off that doubles with
  each quick death (`RESTART_BACKOFF_BASE_S` up to `RESTART_BACKOFF_MAX_S`) and resets once
  a child has lived `STABLE_AFTER_S`; each restart logs `worker_restarted`.
* SIGINT, SIGTERM or SIGHUP stops the ingress and asks every child to stop; a child
  finishes the message in hand (up to `shutdown_grace_s`) and exits, and one still busy
  after that is killed. A second signal kills them at once. Whatever is queued stays in
  SQLite and runs on the next start; a job a killed worker was holding is handed back to
  its stage at the next start (or by `fail_stale` once its lease runs out).
* No child outlives the main process, even when that is killed with SIGKILL (see
  `_ChildStop`).
* With `comfyui_cmd` ComfyUI is a child too, restarted by its watchdog when it is stuck
  (`app.deploy.local.comfy_child`).
* One pipeline per data folder: the main process and every child hold a lock on a file
  in it (see `single_runner`), so a second `dev` refuses to start while any process of
  the first is alive.
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for_exits
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Self

from app.core.config import Settings
from app.core.errors import (
    ComfyUnavailable,
    RunnerError,
)
from app.core.logs import configure_logging, get_logger
from app.core.models import Stage
from app.deploy.local.comfy_child import ManagedComfy
from app.engine.deps import Deps, build_deps
from app.engine.metrics import enable_multiprocess
from app.engine.worker import run_slots

if TYPE_CHECKING:
    import uvicorn

SWEEP_INTERVAL_S = 1.0
#: With the 30 s lease, a dead holder is taken back within 40 s of its last heartbeat.
FAIL_STALE_INTERVAL_S = 10.0
CLEANUP_INTERVAL_S = 3600.0
#: While ComfyUI is down the render worker leaves messages queued and checks again: soon
#: at first (a restart takes a few seconds; a slot asleep for the full interval left a job
#: waiting that long after ComfyUI was back), then at most every `COMFY_RETRY_MAX_S`.
COMFY_RETRY_FIRST_S = 0.25
COMFY_RETRY_MAX_S = 2.0
#: Restart back-off: the first restart waits the base, each further quick death doubles it.
RESTART_BACKOFF_BASE_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
#: A child that lived this long before it died is restarted after the base delay again.
STABLE_AFTER_S = 30.0
#: How often the supervisor looks at the signals and the ingress thread.
SUPERVISE_TICK_S = 0.25
#: Exit status of a child that was still busy when its own grace period ran out.
EXIT_GRACE_EXPIRED = 3
#: Signals that stop the pipeline (SIGHUP: the terminal went away).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOCK_FILE = "runner.lock"
MEMBERS_LOCK_FILE = "runner.members.lock"
_PR_SET_PDEATHSIG = 1


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


# --- the children's side ---------------------------------------------------------------

#: A child's shared lock on the members lock file; open for the life of the process.
_member_lock_fd: int | None = None


class _ChildStop:
    """Whether a child should stop: the parent asked, a signal came, or the parent is gone.

    Children must not outlive the main process, even one killed with SIGKILL (which runs
    no clean-up of ours). Two mechanisms, because neither is enough alone:

    * On Linux, `prctl(PR_SET_PDEATHSIG, SIGTERM)` makes the kernel signal the child the
      moment its parent dies, also while it is blocked in a long render or a queue poll.
      It fires when the parent *thread* that started the child ends, so the supervisor
      starts every child from the main thread; and it cannot help a child whose parent
      died before the call, hence the parent-pid check right after it.
    * Everywhere, `requested()` (called between messages and in every wait) compares
      `os.getppid()` with the pid that started us: a re-parented child stops by itself.

    A stop that comes from a signal or the parent's death has nobody left to enforce the
    grace period, so it arms a watchdog that ends the process once `grace_s` has passed.
    """

    def __init__(self, stop: Event, parent_pid: int, grace_s: float, name: str) -> None:
        self.event = stop
        self.parent_pid = parent_pid
        self.grace_s = grace_s
        self.name = name
        self.reason: str | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        if sys.platform == "linux":
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            except (OSError, AttributeError):  # pragma: no cover - no libc prctl
                pass
        self.requested()  # the parent may have died before prctl

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._begin(signal.Signals(signum).name)

    def _begin(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        watchdog = threading.Thread(target=self._expire, name="grace-watchdog", daemon=True)
        watchdog.start()

    def _expire(self) -> None:
        time.sleep(self.grace_s)
        get_logger(worker=self.name, pid=os.getpid()).warning(
            "worker_grace_expired", reason=self.reason, grace_s=self.grace_s
        )
        os._exit(EXIT_GRACE_EXPIRED)

    def requested(self) -> bool:
        if self.reason is None and os.getppid() != self.parent_pid:
            self._begin("parent_gone")
        return self.reason is not None or self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on a stop; whether one was requested."""
        end = time.monotonic() + seconds
        while not self.requested():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.event.wait(min(left, SUPERVISE_TICK_S))
        return True


def _join_members(lock_path: Path | None) -> None:
    """Hold a shared lock on the members file for the rest of this process's life."""
    global _member_lock_fd
    if lock_path is None:
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    # Blocking: a starting `dev` takes the exclusive lock only for a moment, to probe.
    fcntl.flock(fd, fcntl.LOCK_SH)
    _member_lock_fd = fd


def _child_setup(
    settings: Settings, name: str, stop: Event, parent_pid: int, lock_path: Path | None
) -> _ChildStop:
    stopping = _ChildStop(stop, parent_pid, settings.shutdown_grace_s, name)
    _join_members(lock_path)
    configure_logging(settings.log_level, settings.log_json)
    return stopping


def run_worker(
    settings: Settings,
    spec: WorkerSpec,
    stop: Event,
    parent_pid: int | None = None,
    lock_path: Path | None = None,
) -> None:
    """A worker process: drain its stage's queue until asked to stop."""
    name = f"{spec.stage.value}-{spec.index}"
    stopping = _child_setup(settings, name, stop, parent_pid or os.getppid(), lock_path)
    _drain_loop(settings, spec, stopping)


def _drain_loop(settings: Settings, spec: WorkerSpec, stopping: _ChildStop) -> None:
    """One worker: drain its stage's queue until asked to stop (a process or a thread)."""
    deps = build_deps(settings)
    log = get_logger(stage=spec.stage.value, worker=spec.index, pid=os.getpid())
    log.info("worker_started")
    from app.stages import drain, stage_functions

    before_each = deps.comfy.ready if spec.stage is Stage.RENDER else None

    def serve() -> None:
        retry_s = COMFY_RETRY_FIRST_S
        while not stopping.requested():
            try:
                drain(
                    spec.stage,
                    deps,
                    max_items=1,
                    wait_s=settings.queue_poll_timeout_s,
                    before_each=before_each,
                )
                retry_s = COMFY_RETRY_FIRST_S
            except ComfyUnavailable:
                stopping.wait(retry_s)
                retry_s = min(retry_s * 2, COMFY_RETRY_MAX_S)
            except Exception:
                log.exception("worker_loop_error")  # keep serving; the job itself was failed
                stopping.wait(1.0)

    # A render worker holds several jobs (their prompts queued in ComfyUI) over one
    # ComfyClient: one websocket and HTTP pool, as a Modal container with max_inputs > 1.
    slots = settings.local_render_depth if spec.stage is Stage.RENDER else 1
    if slots > 1:
        stage_functions()  # imported once here, not by several slot threads at once
    run_slots(slots, serve, name=f"{spec.stage.value}-{spec.index}")
    log.info("worker_stopped", reason=stopping.reason or "stop_requested")


def run_engine(
    settings: Settings,
    stop: Event,
    parent_pid: int | None = None,
    lock_path: Path | None = None,
) -> None:
    """Every stage worker as a thread of one process (`local_engine = "threads"`).

    The same drain loops and stage functions as the worker processes, over the same
    durable SQLite queues (a put wakes the waiting thread through the queue's pipe); one
    process instead of one per worker saves its memory and start-up, and the supervisor
    restarts the whole engine if it dies. A thread that ends unexpectedly ends the
    process, so the supervisor sees it.
    """
    stopping = _child_setup(settings, "engine", stop, parent_pid or os.getppid(), lock_path)
    # The stages import their modules on first use; threads doing that at once can see a
    # partly initialised module (an ImportError at start-up), so import them here first.
    from app.stages import intake, stage_functions

    stage_functions()
    del intake
    threads = [
        threading.Thread(
            target=_drain_loop,
            args=(settings, spec, stopping),
            name=f"{spec.stage.value}-{spec.index}",
            daemon=True,
        )
        for spec in worker_specs(settings)
    ]
    for thread in threads:
        thread.start()
    while not stopping.requested():
        if not all(thread.is_alive() for thread in threads):
            get_logger(worker="engine", pid=os.getpid()).error("engine_thread_died")
            os._exit(1)
        stopping.event.wait(SUPERVISE_TICK_S)
    deadline = time.monotonic() + settings.shutdown_grace_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def run_maintenance(
    settings: Settings,
    stop: Event,
    parent_pid: int | None = None,
    lock_path: Path | None = None,
) -> None:
    """Sweep every second, fail_stale every 10 s, cleanup hourly."""
    stopping = _child_setup(settings, "maintenance", stop, parent_pid or os.getppid(), lock_path)
    from app.engine.maintenance import cleanup, fail_stale, sweep

    deps = build_deps(settings)
    log = get_logger(worker="maintenance", pid=os.getpid())
    log.info("worker_started")
    last_stale = last_cleanup = 0.0
    while not stopping.wait(SWEEP_INTERVAL_S):
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
    log.info("worker_stopped", reason=stopping.reason or "stop_requested")


#: How long an idle keep-alive connection stays open. Longer than clients' own idle expiry
#: (httpx: 5 s; load balancers: 60 s), so the client closes first: at uvicorn's default
#: of 5 s, the server's timer could fire while a client's next request was already in the
#: socket (more so while the loop is busy), and that request got a connection reset
#: instead of its answer (1-3 of 500 refusals in a 1,000 burst, issue 13).
KEEP_ALIVE_S = 75


def ingress_server(settings: Settings, deps: Deps) -> uvicorn.Server:
    """The uvicorn server of one ingress process (httptools and uvloop when installed)."""
    import uvicorn

    from app.api.ingress import create_app

    config = uvicorn.Config(
        create_app(deps),
        log_level="warning",
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
    )
    return uvicorn.Server(config)


def listening_socket(host: str, port: int) -> socket.socket:
    """The one listening socket every ingress process of `dev` accepts on.

    Bound once, in the main process, without SO_REUSEPORT, so a port already in use is
    an error rather than silently shared; the ingress children receive it.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise RunnerError(f"could not serve on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(False)
    return sock


def run_ingress(
    settings: Settings,
    sock: socket.socket,
    stop: Event,
    parent_pid: int | None = None,
    lock_path: Path | None = None,
    index: int = 1,
) -> None:
    """An ingress child: serve the shared socket until asked to stop."""
    stopping = _child_setup(
        settings, f"ingress-{index}", stop, parent_pid or os.getppid(), lock_path
    )
    server = ingress_server(settings, build_deps(settings))
    serving = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ingress", daemon=True
    )
    serving.start()
    log = get_logger(stage="ingress", worker=index, pid=os.getpid())
    log.info("worker_started")
    while not stopping.requested() and serving.is_alive():
        stopping.event.wait(SUPERVISE_TICK_S)
    server.should_exit = True
    serving.join(settings.shutdown_grace_s + 1)
    log.info("worker_stopped", reason=stopping.reason or "stop_requested")


# --- the main process's side -----------------------------------------------------------


def _recorded_pid(lock: IO[str]) -> str:
    lock.seek(0)
    pid = lock.read().strip()
    return f" (pid {pid})" if pid.isdigit() else ""


@contextmanager
def single_runner(data_dir: Path) -> Iterator[Path]:
    """Refuse a second runner on the same data folder (both would recover each other's jobs).

    Two flocks: `runner.lock`, held exclusively by the main process (it also records its
    pid, for the message), and `runner.members.lock`, held shared by the main process and
    by every child it starts (each reopens it; see `_join_members`). The kernel drops a
    process's locks when it dies, however it dies, so a second `dev` that can take the
    first lock but not an exclusive hold of the second knows that children of an earlier
    `dev` are still alive (say, orphans of a main process killed with SIGKILL) and refuses.
    Yields the members file's path, for the children.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    members_path = data_dir / MEMBERS_LOCK_FILE
    with open(data_dir / LOCK_FILE, "a+") as lock, open(members_path, "a+") as members:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunnerError(
                f"another comfyui-saas dev{_recorded_pid(lock)} is already running on {data_dir}"
            ) from exc
        try:
            fcntl.flock(members, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RunnerError(
                f"processes of an earlier comfyui-saas dev{_recorded_pid(lock)} are still "
                f"running on {data_dir}; wait for them to exit or stop them"
            ) from exc
        fcntl.flock(members, fcntl.LOCK_SH)  # from now on only our own children may join
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield members_path


@dataclass(slots=True)
class _Child:
    """One supervised child: what it runs, its current process and its restart record."""

    name: str
    stage: str
    target: Callable[..., None]
    args: tuple[object, ...]
    process: BaseProcess
    started_at: float
    restarts: int = 0
    quick_deaths: int = 0
    exit_code: int | None = None
    restart_at: float | None = None  # set while it waits out its back-off


def restart_delay(quick_deaths: int) -> float:
    """The back-off before restarting a child that died `quick_deaths` times in a row."""
    return float(min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_BASE_S * 2 ** max(0, quick_deaths - 1)))


class Pipeline:
    """Worker and maintenance processes of the local pipeline, and their supervision.

    `start()` then, in a loop, `supervise()` (from the thread that called `start`, the
    main thread for `dev`; see `_ChildStop`), and `shutdown()` at the end.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        lock_path: Path | None = None,
        ingress_socket: socket.socket | None = None,
    ) -> None:
        self.settings = settings
        self.lock_path = lock_path
        #: Given by `dev`: the ingress children serve it beside the main process's thread.
        self.ingress_socket = ingress_socket
        self.ctx = mp.get_context("spawn")  # no inherited sockets, locks or threads
        self.stop = self.ctx.Event()
        self.force = threading.Event()  # a second stop signal: do not wait out the grace
        self.stopping = False  # set by the first stop signal: restart nothing from now on
        self.children: list[_Child] = []
        self.log = get_logger()
        #: ComfyUI as our own child, restarted by its watchdog (`comfyui_cmd`); else None.
        self.comfy = ManagedComfy.from_settings(settings) if settings.comfyui_cmd else None

    @property
    def processes(self) -> list[BaseProcess]:
        return [child.process for child in self.children]

    def start(self) -> None:
        if self.comfy is not None:
            self.comfy.start()
        if self.settings.local_engine == "threads":
            self._add(
                "engine",
                "engine",
                run_engine,
                (self.settings, self.stop, os.getpid(), self.lock_path),
            )
        else:
            for spec in worker_specs(self.settings):
                self._add(
                    f"{spec.stage.value}-{spec.index}",
                    spec.stage.value,
                    run_worker,
                    (self.settings, spec, self.stop, os.getpid(), self.lock_path),
                )
        self._add(
            "maintenance",
            "maintenance",
            run_maintenance,
            (self.settings, self.stop, os.getpid(), self.lock_path),
        )
        if self.ingress_socket is not None:
            for index in range(1, self.settings.local_ingress_workers):
                self._add(
                    f"ingress-{index}",
                    "ingress",
                    run_ingress,
                    (
                        self.settings,
                        self.ingress_socket,
                        self.stop,
                        os.getpid(),
                        self.lock_path,
                        index,
                    ),
                )

    def _spawn(
        self, target: Callable[..., None], args: tuple[object, ...], name: str
    ) -> BaseProcess:
        process = self.ctx.Process(target=target, args=args, name=name, daemon=True)
        process.start()
        return process

    def _add(
        self, name: str, stage: str, target: Callable[..., None], args: tuple[object, ...]
    ) -> None:
        process = self._spawn(target, args, name)
        self.children.append(_Child(name, stage, target, args, process, time.monotonic()))

    def supervise(self, timeout_s: float = SUPERVISE_TICK_S) -> None:
        """Wait up to `timeout_s` for a child to exit; restart those whose back-off is over."""
        now = time.monotonic()
        waits = [timeout_s] + [
            max(0.0, child.restart_at - now)
            for child in self.children
            if child.restart_at is not None
        ]
        running = [child.process.sentinel for child in self.children if child.restart_at is None]
        wait_for_exits(running, timeout=min(waits))
        if self.stopping or self.stop.is_set():
            return  # a child that exits now was stopped by the same signal (Ctrl-C in a shell)
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None and not child.process.is_alive():
                self._exited(child, now)
            elif child.restart_at is not None and now >= child.restart_at:
                self._restart(child, now)

    def _exited(self, child: _Child, now: float) -> None:
        child.exit_code = child.process.exitcode
        lived = now - child.started_at
        child.quick_deaths = 1 if lived >= STABLE_AFTER_S else child.quick_deaths + 1
        delay = restart_delay(child.quick_deaths)
        child.restart_at = now + delay
        child.process.close()
        self.log.warning(
            "worker_exited",
            stage=child.stage,
            worker=child.name,
            exit_code=child.exit_code,
            signal=_signal_name(child.exit_code),
            lived_s=round(lived, 1),
            restart_in_s=delay,
        )

    def _restart(self, child: _Child, now: float) -> None:
        child.process = self._spawn(child.target, child.args, child.name)
        child.restarts += 1
        child.started_at = now
        child.restart_at = None
        self.log.warning(
            "worker_restarted",
            stage=child.stage,
            worker=child.name,
            exit_code=child.exit_code,
            restarts=child.restarts,
            pid=child.process.pid,
        )

    def shutdown(self, grace_s: float | None = None) -> None:
        """Ask every child to stop, wait up to the grace period, then kill what is left."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self.stop.set()
        live = [c.process for c in self.children if c.restart_at is None]
        deadline = time.monotonic() + grace
        while not self.force.is_set():
            running = [p.sentinel for p in live if p.is_alive()]
            left = deadline - time.monotonic()
            if not running or left <= 0:
                break
            wait_for_exits(running, timeout=min(left, SUPERVISE_TICK_S))
        for process in live:
            if process.is_alive():
                self.log.warning(
                    "worker_killed_after_grace", worker=process.name, pid=process.pid, grace_s=grace
                )
                process.kill()  # SIGTERM would only ask again; the job goes back at next start
                process.join(5)
        if self.comfy is not None:
            self.comfy.stop()  # after the render workers: none of them is waiting on it


def _signal_name(exit_code: int | None) -> str | None:
    """`SIGKILL` for a child killed by a signal (multiprocessing reports -9), else None."""
    if exit_code is None or exit_code >= 0:
        return None
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return None


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP in the main process: the first asks for a clean stop,
    a second one (an impatient Ctrl-C) skips the grace period. Restores the old handlers.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.received: str | None = None
        self.pipeline = pipeline
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Self:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        # Only flag assignments and Event.set (whose lock the main thread never holds
        # while it can be interrupted here) are safe in a handler.
        if self.received is None:
            self.received = signal.Signals(signum).name
            self.pipeline.stopping = True
        else:
            self.pipeline.force.set()


def prepare(settings: Settings, deps: Deps) -> None:
    """Start-up checks and recovery, before any worker runs."""
    from app.engine.maintenance import recover_after_restart

    log = get_logger()
    if settings.comfyui_cmd:
        log.info("comfyui_managed", url=settings.comfyui_url)  # started with the workers
    else:
        _check_comfy(settings, deps)
    recovered = recover_after_restart(deps)
    if recovered:
        log.warning("jobs_recovered_after_restart", count=recovered)


def _check_comfy(settings: Settings, deps: Deps) -> None:
    log = get_logger()
    try:
        stats = deps.comfy.health()
        version = stats.get("system", {}).get("comfyui_version", "?")
        log.info("comfyui_reachable", url=settings.comfyui_url, version=version)
    except ComfyUnavailable:
        print(comfy_help(settings.comfyui_url), flush=True)
        log.warning("comfyui_unreachable", url=settings.comfyui_url)


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
    """Run the whole local pipeline until SIGINT (Ctrl-C), SIGTERM or SIGHUP."""
    settings = listening_settings(settings, host or settings.host, port or settings.port)
    configure_logging(settings.log_level, settings.log_json)
    with single_runner(settings.data_dir) as lock_path:
        # Before any child starts: they inherit the folder and share their counters.
        enable_multiprocess(settings.data_dir / "metrics")
        deps = build_deps(settings)
        prepare(settings, deps)
        log = get_logger()
        sock = listening_socket(settings.host, settings.port)
        # In a thread, uvicorn installs no signal handlers of its own (its handlers
        # re-raise SIGTERM after serving, which killed this process before its children
        # were stopped): the main thread owns the signals and supervises the children.
        server = ingress_server(settings, deps)
        ingress = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name="ingress",
            daemon=True,
        )
        pipeline = Pipeline(settings, lock_path=lock_path, ingress_socket=sock)
        ingress_failed = False
        with StopSignals(pipeline) as signals:
            pipeline.start()
            ingress.start()
            log.info(
                "pipeline_started",
                workers=len(pipeline.children),
                data_dir=str(settings.data_dir),
                pid=os.getpid(),
            )
            try:
                while signals.received is None:
                    if not ingress.is_alive():
                        ingress_failed = True
                        break
                    pipeline.supervise(SUPERVISE_TICK_S)
            finally:
                log.info("pipeline_stopping", signal=signals.received)
                server.should_exit = True
                pipeline.shutdown()
                sock.close()
                ingress.join(settings.shutdown_grace_s + 5)
                log.info("pipeline_stopped")
        if ingress_failed:
            raise RunnerError(
                f"the ingress stopped: could not serve on {settings.host}:{settings.port} "
                "(see the log above)"
            )
