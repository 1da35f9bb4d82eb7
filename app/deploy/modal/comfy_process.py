"""ComfyUI as a child process of a render container: start it, check it, stop it.

The render container starts one ComfyUI per container (inside the memory snapshot when
enabled) and keeps it warm; every job is preceded by `is_healthy`. Only loopback is used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.core.config import ENV_PREFIX
from app.core.errors import ComfyUnavailable
from app.core.logs import get_logger

log = get_logger(component="comfy_server")

#: The snapshot helper's environment variable (snapshot_helper/device.py MODE_ENV).
HELPER_MODE_ENV = "SNAPSHOT_HELPER_MODE"
SELECT_DEVICE_PATH = "/snapshot_helper/select_device"
#: Never handed to ComfyUI or its custom nodes: our settings and credentials.
_PRIVATE_ENV_PREFIXES = (ENV_PREFIX, "AWS_", "HF_TOKEN", "MODAL_TOKEN")


@dataclass(frozen=True, slots=True)
class ComfyLaunch:
    """How to start ComfyUI: where it is, the port, the model paths, the helper's mode."""

    comfy_dir: Path
    port: int = 8188
    extra_model_paths: Path | None = None
    helper_mode: str = ""
    python: str = field(default_factory=lambda: sys.executable)

    @property
    def url(self) -> str:
        """Base URL of the server (loopback only)."""
        return f"http://127.0.0.1:{self.port}"


def command(launch: ComfyLaunch) -> list[str]:
    """The command line that starts ComfyUI listening on loopback only."""
    argv = [
        launch.python,
        "main.py",
        "--listen",
        "127.0.0.1",
        "--port",
        str(launch.port),
        "--disable-auto-launch",
    ]
    if launch.extra_model_paths is not None:
        argv += ["--extra-model-paths-config", str(launch.extra_model_paths)]
    return argv


def child_env(parent: Mapping[str, str], helper_mode: str) -> dict[str, str]:
    """ComfyUI's environment: the container's, without our settings and credentials."""
    env = {k: v for k, v in parent.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}
    if helper_mode:
        env[HELPER_MODE_ENV] = helper_mode
    return env


def is_healthy(url: str, timeout_s: float = 5.0, client: httpx.Client | None = None) -> bool:
    """Whether ComfyUI answers `/system_stats` with its system block."""
    try:
        if client is not None:
            response = client.get(f"{url}/system_stats", timeout=timeout_s)
        else:
            response = httpx.get(f"{url}/system_stats", timeout=timeout_s, trust_env=False)
        return response.status_code == 200 and "system" in response.json()
    except (httpx.HTTPError, ValueError):
        return False


def wait_until_healthy(
    url: str,
    timeout_s: float,
    *,
    alive: Callable[[], bool] = lambda: True,
    interval_s: float = 0.25,
    client: httpx.Client | None = None,
) -> None:
    """Block until ComfyUI is healthy; `ComfyUnavailable` on timeout or if it died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise ComfyUnavailable("ComfyUI exited during start-up")
        if is_healthy(url, timeout_s=min(5.0, timeout_s), client=client):
            return
        time.sleep(interval_s)
    raise ComfyUnavailable(f"ComfyUI was not healthy within {timeout_s:.0f} s")


def _post_json(url: str, timeout_s: float, client: httpx.Client | None) -> Any:
    try:
        if client is not None:
            response = client.post(url, timeout=timeout_s)
        else:
            response = httpx.post(url, timeout=timeout_s, trust_env=False)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ComfyUnavailable(f"ComfyUI call failed: {type(exc).__name__}") from exc


def select_device(url: str, timeout_s: float = 60.0, client: httpx.Client | None = None) -> Any:
    """Ask the snapshot helper to hand ComfyUI the GPU (after a snapshot restore)."""
    return _post_json(f"{url}{SELECT_DEVICE_PATH}", timeout_s, client)


class ComfyProcess:
    """One ComfyUI child process."""

    def __init__(self, launch: ComfyLaunch) -> None:
        self.launch = launch
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, parent_env: Mapping[str, str] | None = None) -> None:
        """Start ComfyUI; its output goes to this container's log."""
        # The child gets a filtered copy of this process's environment (not settings).
        env = child_env(os.environ if parent_env is None else parent_env, self.launch.helper_mode)
        self._proc = subprocess.Popen(command(self.launch), cwd=self.launch.comfy_dir, env=env)
        log.info("comfy_started", pid=self._proc.pid, port=self.launch.port)

    def alive(self) -> bool:
        """Whether the process is running."""
        return self._proc is not None and self._proc.poll() is None

    def wait_until_healthy(self, timeout_s: float) -> None:
        """Block until healthy; raises `ComfyUnavailable` if it exits or times out."""
        wait_until_healthy(self.launch.url, timeout_s, alive=self.alive)

    def stop(self, grace_s: float = 10.0) -> None:
        """Terminate, then kill if it does not exit in `grace_s`."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=grace_s)
        log.info("comfy_stopped", returncode=self._proc.returncode)


def write_extra_model_paths(path: Path, yaml_text: str) -> Path:
    """Write ComfyUI's extra_model_paths.yaml and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml_text)
    return path
