"""The renderer watchdog: a job ComfyUI cannot interrupt fails `renderer_stuck`, the
managed ComfyUI child is restarted, and another tenant's job queued behind it is retried
and completes. Runs the local pipeline (2 render workers) with `comfyui_cmd` starting the
ComfyUI double as a child process whose ImageBlur holds it for 60 s inside one node.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Settings
from app.core.models import JobStatus
from app.core.schemas import JobRequest
from app.deploy.local.runner import Pipeline
from app.engine.deps import Deps, build_deps
from app.stages.intake import admit
from tests.support.waiting import wait_until

WAIT_S = 90.0
TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[tuple[Deps, Pipeline]]:
    port = free_port()
    command = (
        f"{sys.executable} -m tests.comfy_double --port {port} --root {tmp_path / 'comfy'} "
        "--node-delay ImageBlur=60"
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        comfyui_url=f"http://127.0.0.1:{port}",
        comfyui_cmd=command,
        local_render_workers=2,
        render_interrupt_grace_s=1.0,
        # Progress (how the test sees the blocking node start) is written at most this
        # often; the default 2 s would leave the 3 s job no time to show it.
        progress_interval_s=0.2,
        public_url="http://127.0.0.1:9",
    )
    runner = Pipeline(settings)
    runner.start()
    try:
        deps = build_deps(settings)
        wait_until(lambda: _answers(deps), timeout_s=30, interval_s=0.1, what="ComfyUI child up")
        yield deps, runner
    finally:
        runner.shutdown(grace_s=10)


def _answers(deps: Deps) -> bool:
    try:
        deps.comfy.health()
    except Exception:  # noqa: BLE001 - not up yet
        return False
    return True


def blocking(seed: int) -> dict[str, object]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed},
        },
        "2": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0},
        },
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "stuck"},
        },
    }


def quick(seed: int) -> dict[str, object]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "next"}},
    }


def test_a_stuck_render_fails_and_the_next_tenants_job_runs_after_a_restart(
    pipeline: tuple[Deps, Pipeline],
) -> None:
    deps, runner = pipeline
    a = deps.tenants.create("acme").tenant
    b = deps.tenants.create("beta").tenant
    first_pid = runner.comfy.process.pid if runner.comfy and runner.comfy.process else None
    # Workers take a while to start: a first job tells us they are up (A's clock is short).
    warm = admit(deps, b, "bob", JobRequest(workflow=quick(1))).job
    wait_until(lambda: deps.jobs.get(warm.id).status in TERMINAL, timeout_s=WAIT_S, interval_s=0.1)
    stuck = admit(deps, a, "alice", JobRequest(workflow=blocking(7), timeout_s=3)).job
    wait_until(
        lambda: deps.jobs.get(stuck.id).progress_detail.get("node_type") == "ImageBlur",
        timeout_s=WAIT_S,
        interval_s=0.05,
        what="the blocking node running",
    )
    blocked_at = time.monotonic()
    other = admit(deps, b, "bob", JobRequest(workflow=quick(time.time_ns() % 9999))).job

    wait_until(lambda: deps.jobs.get(other.id).status in TERMINAL, timeout_s=WAIT_S, interval_s=0.1)
    took = time.monotonic() - blocked_at
    failed, done = deps.jobs.get(stuck.id), deps.jobs.get(other.id)
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error.code == "renderer_stuck"
    assert done.status is JobStatus.COMPLETED, done.error
    assert runner.comfy is not None and runner.comfy.restarts >= 1
    assert runner.comfy.process is not None and runner.comfy.process.pid != first_pid
    # Far sooner than the 60 s the node would have held the renderer.
    assert took < 45, took
