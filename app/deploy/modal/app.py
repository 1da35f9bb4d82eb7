"""The production deployment: one Modal App, one function per stage, `modal deploy` once.

    scripts/deploy.sh            ==  modal deploy -m app.deploy.modal.app

Layout (names are settings; docs/deploy-modal.md has the runbook):

* `intake`, `fetch`, `upload`, `notify`: cheap CPU functions. A producer puts a message
  on a stage's `modal.Queue` and wakes the consumer with `spawn`; the consumer drains the
  queue until it is empty, then exits. Nothing is always on.
* `Render`: the GPU class. ComfyUI (pinned in `app/deploy/modal/manifest.py`) starts once per
  container, inside the memory snapshot when enabled, and stays warm. Each `run` call
  takes exactly one job, after a health check; an unhealthy ComfyUI puts the job back on
  the queue and the container stops taking inputs.
* `sweep` (every minute) runs `app.engine.maintenance.sweep`, as the local runner does:
  parked retries whose time has come go back on their queues, and consumers are woken for
  anything a wake-up missed, so a raw `modal.Queue.put` is picked up within about a minute.
* `fail_stale`, `cleanup`, `refresh_durable` (keeps tenants and keys past Modal Dict's
  7-day idle expiry), `verify_setup` (scheduled), `download_models` (run by hand),
  and `api`, the ingress as an ASGI app that scales to zero.

Importing this module needs no Modal token and no GPU library: heavy and sibling-stage
imports happen inside function bodies. Decorator arguments come from `Settings` as read
by the deploying shell; containers get the same settings through `container_env`.
"""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import modal

from app.core.config import Settings
from app.core.errors import ComfyUnavailable
from app.core.logs import configure_logging, get_logger
from app.core.models import Stage
from app.deploy.modal import options as opts
from app.deploy.modal.manifest import (
    COMFY_DIR,
    MANIFEST,
    MODELS_DIR,
    SNAPSHOT_HELPER_NAME,
    extra_model_paths_yaml,
    install_commands,
    node_set_version,
    verify_install,
)
from app.deploy.modal.scratch_gate import ScratchGate

ROOT = Path(__file__).resolve().parents[3]  # the repository: app/deploy/modal/app.py
PYTHON_VERSION = "3.11"

settings = Settings()
log = get_logger(component="modal_app")

# ---- images --------------------------------------------------------------------------
# pip_install_from_pyproject reads pyproject.toml when the image is built (on the
# deploying machine), never inside a container, where the file does not exist.

cpu_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install_from_pyproject(str(ROOT / "pyproject.toml"))
    .pip_install(MANIFEST.downloader.requirement)
    .add_local_python_source("app")
)

render_image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .apt_install("git", "libgl1", "libglib2.0-0")
    .pip_install(*(package.requirement for package in MANIFEST.torch))
    .run_commands(*install_commands(MANIFEST))
    .pip_install_from_pyproject(str(ROOT / "pyproject.toml"))
    .add_local_dir(
        ROOT / SNAPSHOT_HELPER_NAME,
        f"{COMFY_DIR}/custom_nodes/{SNAPSHOT_HELPER_NAME}",
        ignore=["__pycache__", "*.pyc"],
    )
    .add_local_python_source("app")
)

# ---- app, volume, secrets ----------------------------------------------------------------

app = modal.App(settings.modal_app_name, include_source=False)

_ENVIRONMENT = settings.modal_environment or None
models_volume = modal.Volume.from_name(
    f"{settings.modal_app_name}-models", environment_name=_ENVIRONMENT, create_if_missing=True
)
#: Per-job inputs and outputs handed between fetch, render and upload containers by path.
scratch_volume = modal.Volume.from_name(
    f"{settings.modal_app_name}-scratch", environment_name=_ENVIRONMENT, create_if_missing=True
)
SCRATCH_DIR = opts.CONTAINER_DATA_DIR
#: This container's coordination of scratch reloads/commits with its inputs' open files.
scratch_gate = ScratchGate(settings.modal_scratch_gate_wait_s)


def _named_secret(spec: opts.SecretSpec) -> modal.Secret:
    return modal.Secret.from_name(
        spec.name, environment_name=_ENVIRONMENT, required_keys=list(spec.required_keys)
    )


def _settings_secret(role: opts.Role) -> modal.Secret:
    # Every container must rebuild the deployer's Settings: the decorators below are
    # evaluated again at import inside the container (snapshot hooks depend on them).
    return modal.Secret.from_dict(dict(opts.container_env(settings, role)))


def _secrets(role: opts.Role) -> list[modal.Secret]:
    named = [_named_secret(spec) for spec in opts.app_secrets(settings)]
    return [*named, _settings_secret(role)]


def _retries(count: int) -> modal.Retries | None:
    if count <= 0:
        return None
    return modal.Retries(max_retries=count, backoff_coefficient=2.0, initial_delay=1.0)


def _limits(scaling: opts.Scaling) -> dict[str, Any]:
    """Decorator keyword arguments for one `Scaling`."""
    kwargs: dict[str, Any] = {
        "min_containers": scaling.min_containers,
        "max_containers": scaling.max_containers,
        "buffer_containers": scaling.buffer_containers,
        "scaledown_window": scaling.scaledown_window_s,
        "timeout": scaling.timeout_s,
    }
    if scaling.startup_timeout_s is not None:
        kwargs["startup_timeout"] = scaling.startup_timeout_s
    retries = _retries(scaling.retries)
    if retries is not None:
        kwargs["retries"] = retries
    return kwargs


CPU_SCALING = opts.cpu_scaling(settings)
RENDER_SCALING = opts.render_scaling(settings)
INGRESS_SCALING = opts.ingress_scaling(settings)
SNAPSHOT = opts.snapshot(settings)

CPU_OPTIONS: dict[str, Any] = {
    "image": cpu_image,
    "volumes": {SCRATCH_DIR: scratch_volume},
    "secrets": _secrets("cpu"),
    **_limits(CPU_SCALING),
}
RENDER_OPTIONS: dict[str, Any] = {
    "image": render_image,
    "gpu": settings.modal_gpu,
    "volumes": {MODELS_DIR: models_volume.read_only(), SCRATCH_DIR: scratch_volume},
    "secrets": _secrets("render"),
    "enable_memory_snapshot": SNAPSHOT.memory,
    "experimental_options": SNAPSHOT.experimental_options or None,
    **_limits(RENDER_SCALING),
}
INGRESS_OPTIONS: dict[str, Any] = {
    "image": cpu_image,
    "secrets": _secrets("ingress"),
    **_limits(INGRESS_SCALING),
}

# ---- per-container dependencies ----------------------------------------------------------

_deps_lock = threading.Lock()
_deps: dict[str, Any] = {}


def _interface(name: str) -> ModuleType:
    """A pipeline module, imported only inside a container (keeps this module light)."""
    return importlib.import_module(name)


def container_deps(comfy_url: str | None = None) -> Any:
    """The container's `Deps` (backend, store, clients), built once and shared by inputs."""
    with _deps_lock:
        if "deps" not in _deps:
            configure_logging(settings.log_level, json_lines=settings.log_json)
            hooks = _interface("app.deploy.modal.hooks")
            manifest = _interface("app.deploy.modal.manifest")
            deps = _interface("app.engine.deps").build_deps(
                settings, waker=wake, comfy_url=comfy_url
            )
            deps.scratch_commit = scratch_gate.exclusive(scratch_volume.commit, "commit")
            deps.scratch_reload = scratch_gate.exclusive(scratch_volume.reload, "reload")
            deps.current_call_id = hooks.current_call_id
            deps.catalog_version = manifest.node_set_version()
            deps.waiting_calls = _waiting_calls
            deps.render_parallel = RENDER_SCALING.max_containers * RENDER_SCALING.max_inputs
            deps.catalog_from_comfy = False  # render containers publish the catalog
            _deps["deps"] = deps
        return _deps["deps"]


def _consumer(stage: Stage) -> Any:
    if stage is Stage.RENDER:
        return Render().run
    return CPU_CONSUMERS[stage]


#: How long one reading of the render breaker serves wake-ups (one Dict read per window
#: instead of one per hand-off); opening is at most this late.
CIRCUIT_CHECK_EVERY_S = 15.0
_circuit: dict[str, float] = {"checked_at": float("-inf"), "open": 0.0}
#: The breaker's clock (tests replace it).
wall_clock = time.time


def _breaker() -> Any:
    breaker = _interface("app.store.breaker")
    return breaker.RenderBreaker(container_deps().backend, wall_clock, settings)


def render_circuit_open() -> bool:
    """Whether render start-ups failed too often lately (then nothing wakes render)."""
    now = monotonic()
    if now - _circuit["checked_at"] >= CIRCUIT_CHECK_EVERY_S:
        try:
            state = _breaker().state()
        except Exception as exc:  # noqa: BLE001 - unknown: keep rendering
            log.warning("render_circuit_unreadable", error=type(exc).__name__)
            return False
        is_open = wall_clock() < state.open_until
        _circuit.update(checked_at=now, open=1.0 if is_open else 0.0)
        if is_open:
            log.error("render_circuit_open", failures=len(state.failures), until=state.open_until)
    return bool(_circuit["open"])


def _record_startup_failure() -> None:
    try:
        _breaker().record_failure()
    except Exception as exc:  # noqa: BLE001 - the start-up error is the one to raise
        log.warning("render_failure_unrecorded", error=type(exc).__name__)


def wake(stage: Stage) -> None:
    """Start one consumer call for `stage`; a failure is only logged (the sweep catches up).

    Render is not woken while its circuit breaker is open (repeated start-up failures):
    the jobs wait in the queue and the next sweep after the cool-down wakes them.
    """
    if stage is Stage.RENDER and render_circuit_open():
        log.warning("render_wake_skipped", reason="render_circuit_open")
        return
    try:
        _consumer(stage).spawn()
    except Exception as exc:  # noqa: BLE001 - a put must never fail for its wake-up
        log.warning("wake_failed", stage=stage.value, error=type(exc).__name__)


#: The drain's clock (tests replace it).
monotonic = time.monotonic


def _drain(stage: Stage) -> int:
    """Drain until empty, `modal_drain_max_items`, or the time budget; then hand over.

    Modal kills a call at its `timeout` mid-message (the message is lost until fail_stale
    re-sends it), so no message is taken once less than one worst-case message
    (`modal_drain_message_budget_s`, at most half the timeout) is left.
    """
    stages = _interface("app.stages")
    limit = settings.modal_drain_max_items
    budget = opts.drain_budget_s(CPU_SCALING, settings.modal_drain_message_budget_s)
    stop_at = monotonic() + budget
    deps = container_deps()
    count = int(
        stages.drain(
            stage,
            deps,
            max_items=limit,
            guard=scratch_gate.holding,
            keep_going=lambda: monotonic() < stop_at,
        )
    )
    if count >= limit or monotonic() >= stop_at:
        wake(stage)  # the queue may hold more: hand over to a fresh call
    return count


# ---- CPU stages ----------------------------------------------------------------------------


@app.function(**CPU_OPTIONS)
@modal.concurrent(max_inputs=CPU_SCALING.max_inputs)
def intake() -> int:
    """Drain the intake queue."""
    return _drain(Stage.INTAKE)


@app.function(**CPU_OPTIONS)
@modal.concurrent(max_inputs=CPU_SCALING.max_inputs)
def fetch() -> int:
    """Drain the fetch queue (download and check job inputs)."""
    return _drain(Stage.FETCH)


@app.function(**CPU_OPTIONS)
@modal.concurrent(max_inputs=CPU_SCALING.max_inputs)
def upload() -> int:
    """Drain the upload queue (store rendered outputs)."""
    return _drain(Stage.UPLOAD)


@app.function(**CPU_OPTIONS)
@modal.concurrent(max_inputs=CPU_SCALING.max_inputs)
def notify() -> int:
    """Drain the notify queue (signed webhooks)."""
    return _drain(Stage.NOTIFY)


CPU_CONSUMERS: dict[Stage, Any] = {
    Stage.INTAKE: intake,
    Stage.FETCH: fetch,
    Stage.UPLOAD: upload,
    Stage.NOTIFY: notify,
}

# ---- render ------------------------------------------------------------------------------


def _publish_catalog(deps: Any, object_info: Any) -> None:
    """Put ComfyUI's node catalog in the dict so intake can check workflows without a GPU."""
    try:
        catalog = _interface("app.adapters.comfy.catalog")
        catalog.publish(
            deps.kv(catalog.CATALOG_DICT), object_info, time.time(), node_set_version(MANIFEST)
        )
    except Exception as exc:  # noqa: BLE001 - rendering works without the catalog
        log.error("catalog_publish_failed", error=type(exc).__name__)
    else:
        log.info("catalog_published", nodes=len(object_info))


@app.cls(**RENDER_OPTIONS)
@modal.concurrent(max_inputs=RENDER_SCALING.max_inputs)
class Render:
    """ComfyUI on a GPU, started once per container and kept warm."""

    @modal.enter(snap=SNAPSHOT.memory)
    def start_comfy(self) -> None:
        """Start ComfyUI (inside the memory snapshot when enabled: CPU only, CUDA hidden)."""
        from app.deploy.modal.comfy_process import (
            ComfyLaunch,
            ComfyProcess,
            write_extra_model_paths,
        )

        paths = write_extra_model_paths(
            Path(COMFY_DIR).parent / "extra_model_paths.yaml", extra_model_paths_yaml(MODELS_DIR)
        )
        launch = ComfyLaunch(
            Path(COMFY_DIR),
            port=opts.COMFY_PORT,
            extra_model_paths=paths,
            helper_mode=SNAPSHOT.helper_mode,
        )
        self.comfy = ComfyProcess(launch)
        try:
            self.comfy.start()
            self.comfy.wait_until_healthy(settings.modal_render_startup_timeout_s)
        except Exception:
            _record_startup_failure()  # the breaker stops a crash loop of GPU containers
            raise

    @modal.enter(snap=False)
    def attach(self) -> None:
        """After start or restore: hand ComfyUI the GPU, publish its catalog, build deps."""
        from app.deploy.modal import comfy_process as comfy_server

        url = self.comfy.launch.url
        try:
            if SNAPSHOT.helper_mode:
                log.info("comfy_device_selected", result=comfy_server.select_device(url))
            self.deps = container_deps(comfy_url=url)
            self.deps.on_renderer_stuck = self.retire
            _publish_catalog(self.deps, self.deps.comfy.object_info())
        except Exception:
            _record_startup_failure()
            raise
        try:
            _breaker().record_success()
        except Exception as exc:  # noqa: BLE001 - rendering works without the record
            log.warning("render_success_unrecorded", error=type(exc).__name__)

    def retire(self, reason: str) -> None:
        """ComfyUI did not honour an interrupt: take this container out and end it.

        No further inputs come here; killing ComfyUI makes the other renders in this
        container see ComfyUnavailable (retried elsewhere), and Modal ends the container
        once its inputs are done (`modal.exit` has nothing left to stop).
        """
        from app.deploy.modal.hooks import stop_fetching_inputs

        log.error("renderer_retired", reason=reason)
        stop_fetching_inputs()
        self.comfy.stop(grace_s=1.0)

    def health_gate(self) -> None:
        """Before each job: an unhealthy ComfyUI retires this container, the job requeues."""
        from app.deploy.modal.comfy_process import is_healthy
        from app.deploy.modal.hooks import stop_fetching_inputs

        if is_healthy(self.comfy.launch.url):
            return
        log.error("comfy_unhealthy", alive=self.comfy.alive())
        stop_fetching_inputs()
        raise ComfyUnavailable()

    @modal.method()
    def run(self) -> int:
        """Render exactly one queued job, so cancelling this call cancels only that job."""
        stages = _interface("app.stages")
        return int(
            stages.drain(
                Stage.RENDER,
                self.deps,
                max_items=1,
                before_each=self.health_gate,
                guard=scratch_gate.holding,
            )
        )

    @modal.exit()
    def stop_comfy(self) -> None:
        """Stop ComfyUI with the container."""
        comfy = getattr(self, "comfy", None)
        if comfy is not None:
            comfy.stop()


# ---- scheduled and manual functions ---------------------------------------------------


def _waiting_calls(stage: Stage) -> int:
    try:
        return int(_consumer(stage).get_current_stats().backlog)
    except Exception:  # noqa: BLE001 - stats are best effort: assume none waiting
        return 0


@app.function(schedule=modal.Cron("* * * * *"), **CPU_OPTIONS)
def sweep() -> dict[str, int]:
    """Every minute: release due parked retries, wake consumers no wake-up reached."""
    result: dict[str, int] = _interface("app.engine.maintenance").sweep(container_deps())
    return result


@app.function(schedule=modal.Period(seconds=settings.modal_fail_stale_every_s), **CPU_OPTIONS)
def fail_stale() -> dict[str, int]:
    """Take back jobs whose stage holder died or overran its lease."""
    result: dict[str, int] = _interface("app.engine.maintenance").fail_stale(container_deps())
    return result


@app.function(schedule=modal.Cron(settings.modal_cleanup_cron), **CPU_OPTIONS)
def cleanup() -> dict[str, int]:
    """Delete expired jobs and outputs, free leaked admission slots."""
    result: dict[str, int] = _interface("app.engine.maintenance").cleanup(container_deps())
    return result


@app.function(schedule=modal.Period(seconds=settings.modal_durable_refresh_every_s), **CPU_OPTIONS)
def refresh_durable() -> dict[str, int]:
    """Read every tenant, key and name record, so Modal Dict's 7-day idle expiry never
    removes them (see `app.engine.durable`)."""
    result: dict[str, int] = _interface("app.engine.durable").refresh_durable(container_deps())
    return result


@app.function(
    image=render_image,
    volumes={MODELS_DIR: models_volume.read_only()},
    secrets=[_settings_secret("render")],
    schedule=modal.Cron(settings.modal_verify_setup_cron),
    timeout=300,
    max_containers=1,
)
def verify_setup() -> dict[str, object]:
    """Check ComfyUI's commit and version, our custom nodes and the models in the volume."""
    report = verify_install(Path(COMFY_DIR), Path(MODELS_DIR))
    summary = report.as_dict()
    if report.ok:
        log.info("setup_verified", **summary)
    else:
        log.error("setup_invalid", **summary)
    return summary


@app.function(
    image=cpu_image,
    volumes={MODELS_DIR: models_volume},
    secrets=[
        *(_named_secret(spec) for spec in opts.download_secrets(settings)),
        _settings_secret("cpu"),
    ],
    timeout=3 * 3600,
    max_containers=1,
)
def download_models() -> dict[str, list[str]]:
    """Fill the models volume from the manifest (run by hand: never at request time)."""
    from app.deploy.modal.model_download import download_models as fill
    from app.deploy.modal.model_download import hf_downloader

    # With modal_hf_secret set, huggingface_hub finds HF_TOKEN in the environment itself.
    report = fill(MANIFEST.models, Path(MODELS_DIR), hf_downloader())
    models_volume.commit()
    return report.as_dict()


@app.local_entrypoint()
def check_setup() -> None:
    """`modal run -m app.deploy.modal.app::check_setup`: print verify_setup's report."""
    import json

    print(json.dumps(verify_setup.remote(), indent=2))


# ---- ingress ---------------------------------------------------------------------------


@app.function(**INGRESS_OPTIONS)
@modal.concurrent(max_inputs=INGRESS_SCALING.max_inputs)
@modal.asgi_app(requires_proxy_auth=settings.modal_requires_proxy_auth)
def api() -> Any:
    """The HTTP API; Modal serves it at https://<workspace>--<app>-api.modal.run."""
    return _interface("app.api.ingress").create_app(container_deps())
