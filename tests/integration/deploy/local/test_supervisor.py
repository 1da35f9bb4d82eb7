"""The supervisor of `comfyui-saas dev`, with real processes and signals.

Each `dev` runs in its own session (process group); the fixture kills the whole group
and waits for it to be empty, whatever the test did, so no test leaves a process behind.
Every wait polls against a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.core.models import JobStatus, Stage
from app.engine.deps import Deps, build_deps
from tests.comfy_double import ComfyDouble

WORKFLOW: dict[str, dict[str, Any]] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 123},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "sup"}},
}
#: 1 intake + 2 fetch + 1 render + 1 upload + 1 notify workers, maintenance, and the
#: second ingress process (local_ingress_workers = 2).
CHILDREN = 8
#: Slack for a loaded CI machine on top of the bounds under test.
SLACK_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `condition` until it is truthy (returned) or `timeout_s` passes (fail)."""
    end = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc."""
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.add(int(entry))
    return members


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def worker_name(record: dict[str, Any]) -> str:
    """`render-0` or `maintenance`, from a line a child logged."""
    if "stage" in record:
        return f"{record['stage']}-{record['worker']}"
    return str(record["worker"])


class Dev:
    """One `comfyui-saas dev` in a session of its own, logging JSON lines to a file."""

    def __init__(
        self,
        data_dir: Path,
        comfy_url: str,
        log: Path,
        grace_s: float,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.offset = log.stat().st_size if log.exists() else 0  # this run's lines only
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_SAAS_")}
        env.update(
            {
                "COMFYUI_SAAS_DATA_DIR": str(data_dir),
                "COMFYUI_SAAS_COMFYUI_URL": comfy_url,
                "COMFYUI_SAAS_LOG_JSON": "true",
                "COMFYUI_SAAS_SHUTDOWN_GRACE_S": str(grace_s),
                "PYTHONUNBUFFERED": "1",
                **(extra_env or {}),
            }
        )
        with log.open("ab") as out:
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
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the fixture kills all of it
            )
        self.pgid = self.process.pid

    def text(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace")

    def events(self, event: str, **match: object) -> list[dict[str, Any]]:
        found = []
        for line in self.text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event and all(record.get(k) == v for k, v in match.items()):
                found.append(record)
        return found

    def worker_pids(self, stage: str | None = None) -> dict[str, int]:
        """Worker name (`render-0`, `maintenance`) → pid of its latest start."""
        pids = {}
        for record in self.events("worker_started"):
            name = worker_name(record)
            if stage is None or name.startswith(stage):
                pids[name] = int(record["pid"])
        return pids

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.text()[-3000:]
            if len(self.worker_pids()) < CHILDREN:
                return False
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 90, "dev up with all its workers")

    def kill_group(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(10)
        wait_for(lambda: not group_members(self.pgid), 30, "the killed group to be gone")


@pytest.fixture
def dev_factory(tmp_path: Path) -> Iterator[Callable[..., Dev]]:
    started: list[Dev] = []

    def start(comfy_url: str, *, grace_s: float = 10.0, ready: bool = True) -> Dev:
        dev = Dev(tmp_path / "data", comfy_url, tmp_path / "dev.log", grace_s)
        started.append(dev)
        if ready:
            dev.wait_ready()
        return dev

    try:
        yield start
    finally:
        for dev in started:
            dev.kill_group()  # SIGKILL ends stopped processes too


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    return build_deps(Settings(data_dir=tmp_path / "data"))


def submit(deps: Deps, dev: Dev, color: int = 123) -> str:
    key = deps.tenants.create(f"t{time.monotonic_ns()}").api_key
    workflow = {**WORKFLOW, "1": {**WORKFLOW["1"], "inputs": {**WORKFLOW["1"]["inputs"]}}}
    workflow["1"]["inputs"]["color"] = color
    response = httpx.post(
        f"{dev.url}/v1/jobs",
        json={"workflow": workflow},
        headers={"Authorization": f"Bearer {key}", "X-User-ID": "ann"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def completed(deps: Deps, job_id: str) -> bool:
    job = deps.jobs.get(job_id)
    assert job.status is not JobStatus.FAILED, job
    return job.status is JobStatus.COMPLETED


@pytest.mark.timeout(240)
def test_every_killed_worker_is_restarted_and_the_pipeline_still_completes_a_job(
    deps: Deps, comfy_double: ComfyDouble, dev_factory: Callable[..., Dev]
) -> None:
    dev = dev_factory(comfy_double.url)
    before = dev.worker_pids()
    assert len(before) == CHILDREN
    # When one worker of every stage, and maintenance, is killed with SIGKILL
    killed_at = time.monotonic()
    for pid in before.values():
        os.kill(pid, signal.SIGKILL)
    # Then each is started again (a new pid) and logs why
    after = wait_for(
        lambda: (now := dev.worker_pids()) and all(now[n] != before[n] for n in before) and now,
        60,
        "a new process for every killed worker",
    )
    latency = time.monotonic() - killed_at
    print(f"\nall {CHILDREN} killed workers serving again {latency:.1f} s after the kill")
    for name, pid in after.items():
        assert alive(pid), name
    restarts = dev.events("worker_restarted")
    assert {r["worker"] for r in restarts} == set(before)
    assert all(r["exit_code"] == -signal.SIGKILL and r["restarts"] == 1 for r in restarts)
    assert {r["stage"] for r in restarts} >= {s.value for s in Stage} | {"maintenance"}
    # And the pipeline still completes a job, with only the new workers
    job_id = submit(deps, dev)
    wait_for(lambda: completed(deps, job_id), 60, "the job to complete")
    assert dev.process.poll() is None


@pytest.mark.timeout(240)
def test_a_worker_killed_again_and_again_is_restarted_with_a_growing_backoff(
    comfy_double: ComfyDouble, dev_factory: Callable[..., Dev]
) -> None:
    dev = dev_factory(comfy_double.url)
    delays: list[float] = []
    for round_ in range(1, 4):
        pid = dev.worker_pids("notify")["notify-0"]
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda pid=pid: bool(dev.worker_pids("notify")["notify-0"] != pid),  # type: ignore[misc]
            60,
            f"restart {round_} of notify",
        )
        print(
            f"\nnotify-0 killed ({round_}): serving again in {time.monotonic() - killed_at:.1f} s"
        )
        exits = dev.events("worker_exited", worker="notify-0")
        delays.append(exits[-1]["restart_in_s"])
        assert dev.events("worker_restarted", worker="notify-0")[-1]["restarts"] == round_
    assert delays == [0.5, 1.0, 2.0]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_lets_the_render_in_hand_finish_then_every_process_exits(
    signum: signal.Signals,
    deps: Deps,
    comfy_double: ComfyDouble,
    dev_factory: Callable[..., Dev],
) -> None:
    grace_s = 15.0
    comfy_double.node_delay_s = {"ImageInvert": 2.0}
    dev = dev_factory(comfy_double.url, grace_s=grace_s)
    children = set(dev.worker_pids().values())
    job_id = submit(deps, dev)
    wait_for(lambda: comfy_double.running, 30, "ComfyUI to run the job's prompt")
    # When only the main process gets the signal
    signalled_at = time.monotonic()
    dev.process.send_signal(signum)
    # Then the whole group is gone within the grace period
    wait_for(lambda: not group_members(dev.pgid), grace_s + SLACK_S, "every process to exit")
    took = time.monotonic() - signalled_at
    print(f"\n{signum.name}: all processes gone {took:.1f} s after the signal (grace {grace_s})")
    assert dev.process.wait(5) == 0
    assert not any(alive(pid) for pid in children)
    # And the render in hand was finished, not dropped: the job moved on (or completed)
    job = deps.jobs.get(job_id)
    assert job.status is not JobStatus.FAILED
    assert job.stage is not Stage.RENDER or job.status is JobStatus.COMPLETED, job
    text = dev.text()
    assert "Traceback" not in text
    assert not dev.events("worker_killed_after_grace")
    assert len(dev.events("worker_stopped")) == CHILDREN
    assert dev.events("pipeline_stopping", signal=signum.name) and dev.events("pipeline_stopped")


@pytest.mark.timeout(240)
def test_a_worker_busy_past_the_grace_is_killed_and_its_job_runs_on_the_next_start(
    tmp_path: Path, deps: Deps, comfy_double: ComfyDouble, dev_factory: Callable[..., Dev]
) -> None:
    grace_s = 8.0  # idle workers need a second or two to exit on a loaded machine
    comfy_double.node_delay_s = {"ImageInvert": 600.0}
    dev = dev_factory(comfy_double.url, grace_s=grace_s)
    job_id = submit(deps, dev)
    wait_for(lambda: comfy_double.running, 30, "ComfyUI to run the job's prompt")
    signalled_at = time.monotonic()
    dev.process.send_signal(signal.SIGTERM)
    wait_for(lambda: not group_members(dev.pgid), grace_s + SLACK_S, "every process to exit")
    took = time.monotonic() - signalled_at
    print(f"\nSIGTERM, render busy: all gone {took:.1f} s after it (grace {grace_s})")
    assert took >= grace_s  # the render worker was given its grace
    assert dev.process.wait(5) == 0
    assert [r["worker"] for r in dev.events("worker_killed_after_grace")] == ["render-0"]
    # The job is not lost: the next start hands it back to render, and it completes
    comfy_double.stop()  # drop the endless render: a fresh ComfyUI
    fresh = ComfyDouble(tmp_path / "comfy2")
    fresh.start()
    try:
        dev_factory(fresh.url)
        wait_for(lambda: completed(deps, job_id), 60, "the handed-back job to complete")
    finally:
        fresh.stop()


@pytest.mark.timeout(240)
def test_children_exit_when_the_main_process_is_killed(
    deps: Deps, comfy_double: ComfyDouble, dev_factory: Callable[..., Dev]
) -> None:
    grace_s = 4.0
    comfy_double.node_delay_s = {"ImageInvert": 600.0}
    dev = dev_factory(comfy_double.url, grace_s=grace_s)
    pids = dev.worker_pids()
    job_id = submit(deps, dev)
    wait_for(lambda: comfy_double.running, 30, "ComfyUI to run the job's prompt")
    # When the main process alone is killed with SIGKILL (no clean-up of ours runs)
    killed_at = time.monotonic()
    dev.process.kill()
    dev.process.wait(10)
    # Then every idle child stops at once, and the busy render worker within its grace
    idle = {name: pid for name, pid in pids.items() if name != "render-0"}
    wait_for(lambda: not any(alive(p) for p in idle.values()), SLACK_S, "idle children to exit")
    idle_took = time.monotonic() - killed_at
    wait_for(lambda: not group_members(dev.pgid), grace_s + SLACK_S, "every process to exit")
    took = time.monotonic() - killed_at
    print(f"\nmain killed: idle children gone in {idle_took:.1f} s, all in {took:.1f} s")
    reasons = {worker_name(r): r["reason"] for r in dev.events("worker_stopped")}
    assert set(reasons) == set(idle)
    assert set(reasons.values()) <= {"SIGTERM", "parent_gone"}
    assert dev.events("worker_grace_expired", worker="render-0")
    assert not deps.jobs.get(job_id).is_terminal  # handed back at the next start


@pytest.mark.timeout(240)
def test_a_second_dev_refuses_while_any_process_of_the_first_is_alive(
    comfy_double: ComfyDouble, dev_factory: Callable[..., Dev]
) -> None:
    first = dev_factory(comfy_double.url)

    def refused(expect: str) -> None:
        second = dev_factory(comfy_double.url, ready=False)
        assert second.process.wait(60) == 1
        lines = [line for line in second.text().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expect in lines[0], second.text()[-2000:]
        assert not second.events("worker_started")

    # While the first runs
    refused(f"another comfyui-saas dev (pid {first.process.pid}) is already running on ")
    # While only a child of the first is alive (stopped, so the kernel's SIGTERM on its
    # parent's death waits), after its main process was killed
    straggler = first.worker_pids()["upload-0"]
    os.kill(straggler, signal.SIGSTOP)
    first.process.kill()
    first.process.wait(10)
    others = set(first.worker_pids().values()) - {straggler}
    wait_for(lambda: not any(alive(p) for p in others), SLACK_S, "the other children to exit")
    assert alive(straggler)
    refused(f"processes of an earlier comfyui-saas dev (pid {first.process.pid}) are still running")
    # Once it is gone too, a new dev starts
    os.kill(straggler, signal.SIGCONT)
    wait_for(lambda: not group_members(first.pgid), SLACK_S, "the straggler to exit")
    third = dev_factory(comfy_double.url)
    assert third.process.poll() is None
