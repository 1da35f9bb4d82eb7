"""Shared parts of the benchmarks: a real `comfyui-saas dev` process, statistics, output.

Each benchmark starts the pipeline exactly as a user does (`comfyui-saas dev`, a process
with its worker children), against the ComfyUI protocol double from the test suite or a
real ComfyUI (`--comfyui-url`), on a fresh data folder. Every number is printed with the
load average it was measured under: on a shared machine ratios of interleaved runs say
more than absolute times.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.engine.deps import build_deps  # noqa: E402

#: Caps high enough that no benchmark is refused by its own tenant.
BIG_CAP = 1_000_000


def workflow(color: int, size: int = 64) -> dict[str, Any]:
    """The issue's trivial job: a size x size EmptyImage of `color`, inverted, saved."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": color % 0xFFFFFF},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b"}},
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds of durations given in seconds."""
    return {f"p{p}": round(percentile(values_s, p) * 1000, 2) for p in (50, 95, 99)} | {
        "max": round(max(values_s, default=0.0) * 1000, 2)
    }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    widths = [
        max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
        for i, h in enumerate(header)
    ]
    print(f"\n{title}")
    print(" | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def print_json(report: Mapping[str, Any]) -> None:
    print(json.dumps(dict(report), sort_keys=True), flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@dataclass
class Stack:
    """A running `comfyui-saas dev` and what a client needs to use it."""

    url: str
    comfy_url: str
    api_key: str
    settings: Settings
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str = "bench") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "X-User-ID": user}

    def processes(self) -> dict[str, int]:
        """Process name -> pid: `ingress+supervisor` (the dev process), each worker
        process, and `engine` for the one process of `local_engine=threads`."""
        names: dict[int, list[str]] = {self.process.pid: ["ingress+supervisor"]}
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "worker_started" and "pid" in event:
                name = (
                    f"{event['stage']}-{event['worker']}"
                    if "stage" in event
                    else str(event.get("worker"))
                )
                names.setdefault(int(event["pid"]), []).append(name)
        found = {}
        for pid, of_pid in names.items():
            latest = list(dict.fromkeys(of_pid))  # a restarted worker logs again
            found["engine" if len(latest) > 1 else latest[0]] = pid
        return {n: p for n, p in found.items() if Path(f"/proc/{p}").exists()}


def _started_workers(log_path: Path) -> int:
    """How many children `pipeline_started` announced (a large number until it has)."""
    for line in log_path.read_text(errors="replace").splitlines():
        if '"pipeline_started"' in line:
            return int(json.loads(line)["workers"])
    return 1 << 30


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def comfyui(url: str | None, tmp: Path, render_s: float = 0.0) -> Iterator[str]:
    """The ComfyUI to use: `url`, or the protocol double started for the run.

    `render_s`: the double's ImageInvert takes that long (a sleep: GPU time that costs
    the host no CPU), so ComfyUI's idle time between prompts shows in jobs/s.
    """
    if url:
        yield url.rstrip("/")
        return
    from tests.comfy_double import ComfyDouble

    double = ComfyDouble(tmp / "comfy")
    if render_s:
        double.node_delay_s = {"ImageInvert": render_s}
    try:
        yield double.start()
    finally:
        double.stop()


@contextmanager
def dev_stack(
    comfy_url: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    cap: int = BIG_CAP,
    render_s: float = 0.0,
) -> Iterator[Stack]:
    """`comfyui-saas dev` on a fresh data folder, a tenant with `cap` jobs per user."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        url_of_comfy = stack.enter_context(comfyui(comfy_url, tmp, render_s))
        data_dir = tmp / "data"
        settings = Settings(data_dir=data_dir, comfyui_url=url_of_comfy)
        api_key = (
            build_deps(settings)
            .tenants.create("bench", max_active_jobs_per_user=cap, max_active_jobs=cap)
            .api_key
        )
        port = free_port()
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_SAAS_")}
        child_env.update(
            {
                "COMFYUI_SAAS_DATA_DIR": str(data_dir),
                "COMFYUI_SAAS_COMFYUI_URL": url_of_comfy,
                "COMFYUI_SAAS_LOG_JSON": "true",
                "COMFYUI_SAAS_LOG_LEVEL": "INFO",
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        child_env.update(env or {})
        log_path = tmp / "dev.log"
        log = stack.enter_context(log_path.open("ab"))
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from app.cli.main import main; main()",
                "dev",
                "--port",
                str(port),
            ],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the teardown stops its workers too
            cwd=ROOT,
        )

        def stop() -> None:
            try:
                os.killpg(process.pid, signal.SIGINT)
                process.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)

        stack.callback(stop)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("dev did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.1)
        ready = Stack(url, url_of_comfy, api_key, settings, data_dir, process, log_path, child_env)
        # /health answers before the spawned workers have imported everything: wait for
        # every worker's `worker_started`, so no benchmark measures start-up.
        # (Counted by process: the threads engine logs one start per thread.)
        while len(ready.processes()) - 1 < _started_workers(log_path):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("workers did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.1)
        yield ready


def wait_terminal(client: httpx.Client, job_id: str, poll_s: float, timeout_s: float) -> str:
    """Poll GET /v1/jobs/{id} until the job ends; its final status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get(f"/v1/jobs/{job_id}").json()["status"])
        if status in ("completed", "failed", "cancelled"):
            return status
        time.sleep(poll_s)
    return "timeout"
