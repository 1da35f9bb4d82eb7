"""`comfyui-saas dev` as a user runs it: a real process, stopped with Ctrl-C, restarted.

Queued jobs survive the stop: a job waiting for a ComfyUI that went away is still queued
after Ctrl-C and completes once ComfyUI is back and the pipeline restarted.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.core.models import JobStatus, Stage
from app.engine.deps import build_deps
from tests.comfy_double import ComfyDouble
from tests.support.waiting import wait_until

WORKFLOW: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 123},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "dev"}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Dev:
    """One `comfyui-saas dev` process."""

    def __init__(
        self, data_dir: Path, comfy_url: str, log: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_SAAS_")}
        env.update(
            {
                "COMFYUI_SAAS_DATA_DIR": str(data_dir),
                "COMFYUI_SAAS_COMFYUI_URL": comfy_url,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra_env or {})
        self.log_path = log
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from app.cli.main import main; main()",
                "dev",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # Its own process group, so teardown can stop the workers it spawns as well.
            start_new_session=True,
        )
        try:
            wait_until(self._healthy, timeout_s=60, interval_s=0.2, what="dev came up")
        except BaseException:
            self.kill()
            raise

    def _healthy(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()[-3000:]
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def ctrl_c(self) -> int:
        """Send Ctrl-C; the exit status (0, or 130 = 128 + SIGINT as shells report it)."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=45)
        finally:
            self.log.close()

    def kill(self) -> None:
        """Stop the whole process group: a SIGKILLed dev would leave its workers running."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the dev and all its workers have already exited
        self.process.wait(10)
        self.log.close()


@pytest.fixture
def dev_factory(tmp_path: Path) -> Iterator[Callable[[str], Dev]]:
    started: list[Dev] = []

    def start(comfy_url: str) -> Dev:
        dev = Dev(tmp_path / "data", comfy_url, tmp_path / "dev.log")
        started.append(dev)
        return dev

    try:
        yield start
    finally:
        for dev in started:
            dev.kill()


@pytest.mark.timeout(240)
def test_ctrl_c_keeps_queued_jobs_for_the_next_start(
    tmp_path: Path, dev_factory: Callable[[str], Dev]
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    deps = build_deps(settings)
    key = deps.tenants.create("acme").api_key
    headers = {"Authorization": f"Bearer {key}", "X-User-ID": "ann"}
    first_comfy = ComfyDouble(tmp_path / "comfy1")
    first_comfy.start()
    # Given a running pipeline that completes a job over HTTP
    dev = dev_factory(first_comfy.url)
    job1 = httpx.post(f"{dev.url}/v1/jobs", json={"workflow": WORKFLOW}, headers=headers)
    assert job1.status_code == 202, job1.text
    _wait(lambda: deps.jobs.get(job1.json()["id"]).status is JobStatus.COMPLETED)
    # When ComfyUI goes away, a second job waits in the render queue
    first_comfy.stop()
    workflow2 = {
        **WORKFLOW,
        "1": {**WORKFLOW["1"], "inputs": {**WORKFLOW["1"]["inputs"], "color": 7}},
    }
    job2 = httpx.post(f"{dev.url}/v1/jobs", json={"workflow": workflow2}, headers=headers)
    assert job2.status_code == 202, job2.text
    job2_id = job2.json()["id"]
    _wait(lambda: deps.jobs.get(job2_id).stage is Stage.RENDER)
    # The render worker has seen ComfyUI down and put the message back
    wait_until(
        lambda: "message_returned_unhealthy_worker" in (tmp_path / "dev.log").read_text(),
        what="render worker returned the message",
    )
    # And the user presses Ctrl-C
    assert dev.ctrl_c() in (0, 130)
    log = (tmp_path / "dev.log").read_text()
    assert "pipeline_stopped" in log and "Traceback" not in log
    # Then the job is neither lost nor failed: still queued for render
    assert not deps.jobs.get(job2_id).is_terminal
    assert deps.queue(Stage.RENDER).len() == 1
    assert "ComfyUI is not reachable" not in log
    # And on the next start, with ComfyUI back, it completes
    second_comfy = ComfyDouble(tmp_path / "comfy2")
    second_comfy.start()
    try:
        dev_factory(second_comfy.url)
        _wait(lambda: deps.jobs.get(job2_id).status is JobStatus.COMPLETED)
    finally:
        second_comfy.stop()


def test_dev_says_clearly_when_comfyui_is_not_reachable(
    tmp_path: Path, dev_factory: Callable[[str], Dev]
) -> None:
    dev = dev_factory(f"http://127.0.0.1:{free_port()}")
    assert dev.ctrl_c() in (0, 130)
    log = (tmp_path / "dev.log").read_text()
    assert "ComfyUI is not reachable at http://127.0.0.1:" in log
    assert "python main.py --listen 127.0.0.1 --port 8188" in log
    assert "Traceback" not in log


def _wait(condition: Callable[[], object], timeout_s: float = 60.0) -> None:
    wait_until(condition, timeout_s=timeout_s, interval_s=0.1)


@pytest.mark.timeout(240)
def test_the_threads_engine_runs_every_stage_in_one_process(tmp_path: Path) -> None:
    # Given dev with local_engine = threads
    settings = Settings(data_dir=tmp_path / "data")
    deps = build_deps(settings)
    key = deps.tenants.create("acme").api_key
    comfy = ComfyDouble(tmp_path / "comfy")
    comfy.start()
    engine = {"COMFYUI_SAAS_LOCAL_ENGINE": "threads"}
    dev = Dev(tmp_path / "data", comfy.url, tmp_path / "dev.log", extra_env=engine)
    try:
        # When a job is submitted over HTTP
        headers = {"Authorization": f"Bearer {key}", "X-User-ID": "ann"}
        job = httpx.post(f"{dev.url}/v1/jobs", json={"workflow": WORKFLOW}, headers=headers)
        assert job.status_code == 202, job.text
        # Then it passes every stage and completes
        _wait(lambda: deps.jobs.get(job.json()["id"]).status is JobStatus.COMPLETED)
        # And every stage worker ran in one process, which stops cleanly on Ctrl-C
        assert dev.ctrl_c() in (0, 130)
    finally:
        dev.kill()
        comfy.stop()
    log = (tmp_path / "dev.log").read_text()
    started = [line for line in log.splitlines() if "worker_started" in line and "stage=" in line]
    stages = {re.search(r"stage=(\w+)", line).group(1) for line in started}  # type: ignore[union-attr]
    assert {"intake", "fetch", "render", "upload", "notify"} <= stages
    pids = {
        re.search(r"pid=(\d+)", line).group(1)  # type: ignore[union-attr]
        for line in started
        if "stage=ingress" not in line
    }
    assert len(pids) == 1
    assert "Traceback" not in log
