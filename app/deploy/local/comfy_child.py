"""A ComfyUI that `dev` runs as its own child and restarts when it is stuck (the watchdog).

Set `comfyui_cmd` and the supervisor starts that command in its own process group and
looks after it from a thread: every `CHECK_INTERVAL_S` it asks `/system_stats` (with a
short timeout) and looks for a restart request a render worker wrote
(`app.engine.deps.restart_request_path`, when ComfyUI did not honour an interrupt). A
request, a ComfyUI that answered no health check for `comfyui_unhealthy_s` (after it
had come up once), or a child that exited gets the whole process group killed and the
command started again; each restart logs `renderer_restarted` with its reason. Prompts
that were queued on the old ComfyUI vanish with it: their render workers see
`ComfyUnavailable` and retry them.

Without `comfyui_cmd` ComfyUI is not ours to restart: a request is logged
(`renderer_restart_unmanaged`) and left to the operator.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from app.core.config import Settings
from app.core.logs import get_logger
from app.engine.deps import restart_request_path

#: How often the watchdog asks ComfyUI whether it answers.
CHECK_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 2.0
#: A freshly started ComfyUI may take this long to answer before it counts as unhealthy.
STARTUP_ALLOWANCE_S = 180.0
STOP_GRACE_S = 10.0

log = get_logger()


def answers(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether ComfyUI answers `/system_stats` with a 200 within `timeout_s`."""
    try:
        response = httpx.get(f"{url}/system_stats", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


class ManagedComfy:
    """The ComfyUI child: `start`, `tick` (one watchdog look; the thread calls it), `stop`."""

    def __init__(
        self,
        command: list[str],
        url: str,
        request_path: Path,
        *,
        unhealthy_s: float,
        log_path: Path | None = None,
        healthy: Callable[[str], bool] = answers,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command
        self.url = url.rstrip("/")
        self.request_path = request_path
        self.unhealthy_s = unhealthy_s
        self.log_path = log_path
        self.healthy = healthy
        self.clock = clock
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._started_at = 0.0
        self._up_once = False
        self._last_answer = 0.0
        self._log_file: IO[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ManagedComfy:
        return cls(
            shlex.split(settings.comfyui_cmd),
            settings.comfyui_url,
            restart_request_path(settings),
            unhealthy_s=settings.comfyui_unhealthy_s,
            log_path=settings.data_dir / "comfyui.log",
        )

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start ComfyUI and the watchdog thread."""
        self.request_path.unlink(missing_ok=True)  # a request from an earlier run is moot
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="comfy-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watchdog, then ComfyUI (SIGTERM, SIGKILL after `STOP_GRACE_S`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEALTH_TIMEOUT_S + CHECK_INTERVAL_S + 1)
        self._kill(grace_s=STOP_GRACE_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_INTERVAL_S):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the watchdog must outlive one bad look
                log.error("comfy_watchdog_failed", error=type(exc).__name__)

    # --- one look -----------------------------------------------------------------------

    def tick(self) -> str | None:
        """Look once; restart ComfyUI if needed. Returns the reason it restarted, or None."""
        reason = self._reason()
        if reason is not None:
            self.restart(reason)
        return reason

    def _reason(self) -> str | None:
        if self.request_path.exists():
            return "render worker: " + self.request_path.read_text(errors="replace")[:300]
        if self.process is not None and self.process.poll() is not None:
            return f"ComfyUI exited with status {self.process.returncode}"
        now = self.clock()
        if self.healthy(self.url):
            self._up_once = True
            self._last_answer = now
            return None
        if self._up_once:
            if now - self._last_answer >= self.unhealthy_s:
                return f"ComfyUI answered no health check for {now - self._last_answer:.0f} s"
        elif now - self._started_at >= STARTUP_ALLOWANCE_S:
            return f"ComfyUI did not come up within {STARTUP_ALLOWANCE_S:.0f} s"
        return None

    def restart(self, reason: str) -> None:
        """Kill ComfyUI's process group and start it again."""
        log.error("renderer_restarted", reason=reason, restarts=self.restarts + 1)
        self._kill(grace_s=0.0)
        self.request_path.unlink(missing_ok=True)
        self.restarts += 1
        self._spawn()

    # --- process ------------------------------------------------------------------------

    def _spawn(self) -> None:
        if self.log_path is not None and self._log_file is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.log_path.open("ab")
        output = self._log_file if self._log_file is not None else subprocess.DEVNULL
        # Its own session: the kill reaches every process ComfyUI started, and a Ctrl-C
        # in the terminal reaches only us (we stop it in order).
        self.process = subprocess.Popen(
            self.command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._started_at = self.clock()
        self._up_once = False
        log.info("comfy_child_started", pid=self.process.pid)

    def _kill(self, grace_s: float) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if grace_s > 0:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
                return
            except subprocess.TimeoutExpired:
                pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
