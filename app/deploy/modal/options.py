"""Pure decisions behind the Modal deployment: scaling, snapshots, secrets, env, sweep.

`app.deploy.modal.app` turns these plain values into `modal` objects; keeping them here means
they are computed from `Settings` alone and tested without the SDK or a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from app.core.config import ENV_PREFIX, Settings, env_value
from app.core.models import Stage
from app.deploy.modal.manifest import COMFY_DIR

#: Stages served by cheap CPU containers; render has its own GPU class.
CPU_STAGES: tuple[Stage, ...] = (Stage.INTAKE, Stage.FETCH, Stage.UPLOAD, Stage.NOTIFY)
#: ComfyUI listens here inside each render container, never outside it.
COMFY_PORT = 8188
#: The data folder in every container: the shared scratch Volume is mounted here, so
#: inputs fetched in one container and outputs rendered in another meet in
#: `<data_dir>/work/<job id>` (committed after writing, reloaded before reading).
CONTAINER_DATA_DIR = "/scratch"
#: The snapshot helper's mode when the snapshot is taken without a GPU.
HELPER_CPU_UNTIL_RESTORE = "cpu_until_restore"

Role = Literal["cpu", "render", "ingress"]


@dataclass(frozen=True, slots=True)
class Scaling:
    """Container and input limits of one Modal function or class."""

    min_containers: int
    max_containers: int
    buffer_containers: int
    scaledown_window_s: int
    max_inputs: int
    timeout_s: int
    startup_timeout_s: int | None
    retries: int


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """A Modal Secret looked up by name, with the keys it must contain."""

    name: str
    required_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """How the render class uses Modal's snapshots."""

    memory: bool
    gpu: bool

    @property
    def experimental_options(self) -> dict[str, bool]:
        """The `experimental_options` Modal takes for GPU snapshots."""
        return {"enable_gpu_snapshot": True} if self.gpu else {}

    @property
    def helper_mode(self) -> str:
        """SNAPSHOT_HELPER_MODE for ComfyUI: hide CUDA only when the snapshot has no GPU."""
        return HELPER_CPU_UNTIL_RESTORE if self.memory and not self.gpu else ""


def render_scaling(settings: Settings) -> Scaling:
    """The GPU render class: scale to zero, a small cap, one job per container by default."""
    return Scaling(
        min_containers=settings.modal_render_min_containers,
        max_containers=max(
            settings.modal_render_max_containers, settings.modal_render_min_containers
        ),
        buffer_containers=settings.modal_render_buffer_containers,
        scaledown_window_s=settings.modal_render_scaledown_window_s,
        max_inputs=settings.modal_render_max_inputs,
        timeout_s=settings.modal_render_timeout_s,
        # Both bounded small (config: startup <= 900 s, default 300; retries <= 3, default
        # 1): a broken image or ComfyUI fails every start, and each retried start is a
        # billed GPU container waiting out the whole startup timeout. The render circuit
        # breaker (app/store/breaker.py) stops the sweep from spawning more after that.
        startup_timeout_s=settings.modal_render_startup_timeout_s,
        retries=settings.modal_render_retries,
    )


def drain_budget_s(scaling: Scaling, message_worst_s: int) -> float:
    """How long a drain may keep taking messages: the timeout less one worst-case message
    (at most half the timeout, so a misconfigured budget still drains something)."""
    return scaling.timeout_s - min(message_worst_s, scaling.timeout_s / 2)


def cpu_scaling(settings: Settings) -> Scaling:
    """CPU stage consumers and scheduled functions: never always-on."""
    return Scaling(
        min_containers=0,
        max_containers=settings.modal_cpu_max_containers,
        buffer_containers=0,
        scaledown_window_s=settings.modal_cpu_scaledown_window_s,
        max_inputs=settings.modal_cpu_max_inputs,
        timeout_s=settings.modal_cpu_timeout_s,
        startup_timeout_s=None,
        retries=settings.modal_cpu_retries,
    )


def ingress_scaling(settings: Settings) -> Scaling:
    """The web API; Modal refuses retries on web functions, so it has none."""
    return Scaling(
        min_containers=0,
        max_containers=settings.modal_ingress_max_containers,
        buffer_containers=0,
        scaledown_window_s=settings.modal_ingress_scaledown_window_s,
        max_inputs=settings.modal_ingress_max_inputs,
        timeout_s=300,
        startup_timeout_s=None,
        retries=0,
    )


def snapshot(settings: Settings) -> Snapshot:
    """Snapshot flags; a GPU snapshot only exists on top of a memory snapshot."""
    return Snapshot(
        memory=settings.modal_memory_snapshot,
        gpu=settings.modal_memory_snapshot and settings.modal_gpu_snapshot,
    )


def _env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


STORAGE_KEYS = tuple(
    _env_name(f) for f in ("s3_endpoint_url", "s3_access_key_id", "s3_secret_access_key")
)
SIGNING_KEYS = (_env_name("signing_key"),)
HF_KEYS = ("HF_TOKEN",)


def app_secrets(settings: Settings) -> list[SecretSpec]:
    """Secrets every container gets: object storage and the signing key."""
    return [
        SecretSpec(settings.modal_storage_secret, STORAGE_KEYS),
        SecretSpec(settings.modal_signing_secret, SIGNING_KEYS),
    ]


def download_secrets(settings: Settings) -> list[SecretSpec]:
    """The optional Hugging Face token for `download_models`."""
    return [SecretSpec(settings.modal_hf_secret, HF_KEYS)] if settings.modal_hf_secret else []


def container_env(settings: Settings, role: Role) -> dict[str, str]:
    """COMFYUI_SAAS_* for a container: the deployer's settings, minus what secrets carry.

    Secret values never travel this way (they come from the named Secrets), and the
    deployment fixes what only makes sense on Modal: the Modal backend, S3 storage,
    container-local scratch space, and the local ComfyUI for the render role.
    """
    from_secrets = {*STORAGE_KEYS, *SIGNING_KEYS}
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        key = _env_name(name)
        if isinstance(value, SecretStr) or key in from_secrets:
            continue
        env[key] = env_value(value)
    env[_env_name("backend")] = "modal"
    env[_env_name("storage")] = "s3"
    env[_env_name("data_dir")] = CONTAINER_DATA_DIR
    env[_env_name("log_json")] = "true"
    env[_env_name("comfyui_url")] = f"http://127.0.0.1:{COMFY_PORT}"
    env[_env_name("comfyui_base_dir")] = COMFY_DIR if role == "render" else ""
    return env
