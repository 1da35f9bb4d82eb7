"""A ComfyUI restart while a render worker holds two prompts in it retries both jobs.

The local pipeline (one render worker, `local_render_depth` 2) runs ComfyUI as its
managed child (`comfyui_cmd`): the double, and with `COMFYUI_CMD` (marker `comfyui`) a
real ComfyUI. The child is killed while one job's prompt runs and the other's waits in
ComfyUI's queue; the supervisor starts it again and both jobs complete after a retry.

`COMFYUI_CMD` is a command line with `{port}` and `{base}` in it, for example
`/work/comfy/venv/bin/python /work/comfy/src/main.py --cpu --listen 127.0.0.1
--port {port} --disable-api-nodes --base-directory {base}`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from app.core.models import JobStatus, StatusDetail
from app.core.schemas import JobRequest
from app.deploy.local.runner import Pipeline
from app.engine.deps import Deps, build_deps
from app.stages.intake import admit
from tests.integration.comfy_target import color, invert_workflow, slow_workflow
from tests.support.waiting import wait_until

WAIT_S = 180.0
TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    deps: Deps
    runner: Pipeline
    url: str


@pytest.fixture(params=["double", pytest.param("real", marks=pytest.mark.comfyui)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    base = tmp_path / "comfy"
    if request.param == "real":
        template = os.environ.get("COMFYUI_CMD", "")
        if not template:
            pytest.skip("COMFYUI_CMD is not set; see this module's docstring")
        for folder in ("custom_nodes", "input", "output", "temp", "user"):
            (base / folder).mkdir(parents=True)  # ComfyUI refuses to start without them
        command = template.format(port=port, base=base)
    else:
        command = (
            f"{sys.executable} -m tests.comfy_double --port {port} --root {base} "
            # Longer than a render slot's longest ComfyUI-down back-off (2 s): a slot that
            # saw the double still starting is awake again while the slow prompt runs.
            "--node-delay ImageBlur=4"
        )
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        data_dir=tmp_path / "data",
        comfyui_url=url,
        comfyui_cmd=command,
        comfyui_base_dir=str(base),
        local_render_workers=1,
        local_render_depth=2,
        queue_poll_timeout_s=0.05,
        progress_interval_s=0.2,  # many progress writes while both prompts are in ComfyUI
        public_url="http://127.0.0.1:9",
    )
    runner = Pipeline(settings)
    runner.start()
    try:
        wait_until(lambda: _answers(url), timeout_s=WAIT_S, interval_s=0.2, what="ComfyUI up")
        yield Stack(build_deps(settings), runner, url)
    finally:
        runner.shutdown(grace_s=10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/system_stats", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _queue(url: str) -> tuple[int, int]:
    try:
        body = httpx.get(f"{url}/queue", timeout=2).json()
    except httpx.HTTPError:
        return 0, 0
    return len(body["queue_running"]), len(body["queue_pending"])


def test_a_comfyui_restart_with_two_prompts_queued_retries_both_jobs(stack: Stack) -> None:
    deps, runner = stack.deps, stack.runner
    tenant = deps.tenants.create("acme").tenant
    # Given one render worker holding a slow job's running prompt and a second job's
    # prompt queued behind it
    slow = admit(deps, tenant, "u", JobRequest(workflow=slow_workflow(color(), size=512))).job
    # The slow prompt runs first: admitted together, the two slots race to POST theirs,
    # and a quick prompt that won ran and ended before the slow one queued (a loaded
    # full run saw that, then waited for a state that could no longer come).
    wait_until(
        lambda: _queue(stack.url) == (1, 0),
        timeout_s=WAIT_S,
        interval_s=0.02,
        what="the slow prompt running in ComfyUI",
    )
    quick = admit(deps, tenant, "u", JobRequest(workflow=invert_workflow(color()))).job
    wait_until(
        lambda: _queue(stack.url) == (1, 1),
        timeout_s=WAIT_S,
        interval_s=0.02,
        what="one prompt running and one queued in ComfyUI",
    )
    assert runner.comfy is not None and runner.comfy.process is not None
    first_pid = runner.comfy.process.pid

    # When ComfyUI dies and the supervisor starts it again
    os.killpg(first_pid, signal.SIGKILL)

    # Then both jobs are retried on the new ComfyUI and complete, each job's event log
    # holding the progress of its own graph only
    own_types = {
        slow.id: {"EmptyImage", "ImageBlur", "SaveImage"},
        quick.id: {"EmptyImage", "ImageInvert", "SaveImage"},
    }
    for job in (slow, quick):
        wait_until(
            lambda job=job: deps.jobs.get(job.id).status in TERMINAL,  # type: ignore[misc]
            timeout_s=WAIT_S,
            interval_s=0.1,
            what=f"job {job.id} ended",
        )
        done = deps.jobs.get(job.id)
        assert done.status is JobStatus.COMPLETED, done.error
        details = [e.data.get("detail") for e in done.events if e.type == "status"]
        assert StatusDetail.RENDERER_UNAVAILABLE.value in details  # it was retried
        assert len(done.outputs) == 1
        progress = [e.data for e in done.events if e.type == "progress"]
        types = {p["node_type"] for p in progress if p.get("node_type")}
        assert types and types <= own_types[job.id], types
    assert runner.comfy.restarts >= 1 and runner.comfy.process.pid != first_pid
