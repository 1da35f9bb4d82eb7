"""Sustained throughput through all five stages, per worker configuration.

    python scripts/bench/throughput.py [--seconds 60] [--in-flight 64]
        [--config 1/2/1/1/1 --config 2/2/2/2/2] [--render-depth 1 --render-depth 2]
        [--render-ms 0] [--comfyui-url URL] [--profile-s 5] [--json]

For each configuration (worker processes of intake/fetch/render/upload/notify) it starts
`comfyui-saas dev`, keeps `--in-flight` jobs in the pipeline through the Python queue
client (so every job passes intake, fetch, render, upload and notify) for `--seconds`,
and reports jobs/s, the CPU each process used per completed job (from /proc), and the
saturating process: the one with the highest CPU share. With py-spy installed
(`pip install py-spy`) that process is then profiled for `--profile-s` under the same
load and its hottest functions are printed.

The JSON line's `jobs_per_s`, `completed` and `failed` are the first configuration's
(the dev defaults unless `--config` says otherwise); `configs` has all of them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _stack

from app.clients.queue_client import Client
from app.core.models import JobStatus

STAGES = ("intake", "fetch", "render", "upload", "notify")


def config_env(config: str) -> dict[str, str]:
    counts = [int(n) for n in config.split("/")]
    if len(counts) != len(STAGES):
        raise SystemExit(f"--config wants five counts like 1/2/1/1/1, not {config!r}")
    return {
        f"COMFYUI_SAAS_LOCAL_{s.upper()}_WORKERS": str(n)
        for s, n in zip(STAGES, counts, strict=True)
    }


class Load:
    """Keeps `in_flight` jobs in the pipeline until stopped; counts what ended how."""

    def __init__(self, stack: _stack.Stack, in_flight: int) -> None:
        self.client = Client.from_settings(stack.settings, api_key=stack.api_key, user_id="bench")
        self.in_flight = in_flight
        self.outcomes: Counter[str] = Counter()
        self.counting = False
        self.stop = threading.Event()
        self.color = 0

    def _submit(self) -> str:
        self.color += 1
        return self.client.enqueue({"workflow": _stack.workflow(self.color)})

    def run(self) -> None:
        jobs = self.client.deps.jobs
        pending = [self._submit() for _ in range(self.in_flight)]
        while not self.stop.is_set():
            # Every pending job's decision in one query: a read per job every 10 ms cost
            # this generator 3.8 ms of CPU per job, on the cores the pipeline runs on.
            still = []
            for job_id, decision in zip(pending, jobs.terminals(pending), strict=True):
                if decision is None:
                    still.append(job_id)
                elif self.counting:
                    ok = decision.status is JobStatus.COMPLETED
                    self.outcomes["completed" if ok else "failed"] += 1
            pending = still + [self._submit() for _ in range(self.in_flight - len(still))]
            self.stop.wait(0.01)


def profile(pid: int, seconds: float) -> list[tuple[str, int]] | str:
    """py-spy's hottest functions (self samples) of one process, or why not."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "py-spy not installed (pip install py-spy)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        done = subprocess.run(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, round(seconds))),
                "-r",
                "100",
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not out.exists():
            return f"py-spy failed: {(done.stderr or done.stdout).strip()[-200:]}"
        leaves: Counter[str] = Counter()
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                leaves[stack.split(";")[-1]] += int(count)
    return leaves.most_common(8)


def measure(args: argparse.Namespace, config: str, engine: str, depth: int) -> dict[str, Any]:
    load_before = _stack.load_average()
    env = config_env(config) | {"COMFYUI_SAAS_LOCAL_ENGINE": engine}
    if depth:  # 0: the dev default
        env["COMFYUI_SAAS_LOCAL_RENDER_DEPTH"] = str(depth)
    render_s = args.render_ms / 1000
    with _stack.dev_stack(args.comfyui_url or None, env, cap=args.cap, render_s=render_s) as stack:
        load = Load(stack, args.in_flight)
        driver = threading.Thread(target=load.run, daemon=True)
        driver.start()
        time.sleep(min(3.0, max(0.5, args.seconds / 5)))  # warm-up: workers, connections
        processes = stack.processes()
        cpu_before = {name: _stack.proc_cpu_s(pid) for name, pid in processes.items()}
        bench_cpu_before = time.process_time()
        load.counting = True
        started = time.perf_counter()
        time.sleep(args.seconds)
        load.counting = False
        elapsed = time.perf_counter() - started
        cpu = {name: _stack.proc_cpu_s(pid) - cpu_before[name] for name, pid in processes.items()}
        bench_cpu = time.process_time() - bench_cpu_before
        hottest = max(cpu, key=lambda name: cpu[name])
        spy = profile(processes[hottest], args.profile_s) if args.profile_s > 0 else "skipped"
        load.stop.set()
        driver.join(10)
        peak_rss = {name: _stack.proc_peak_rss_mib(pid) for name, pid in processes.items()}
        files = state_files(stack.data_dir)
    completed, failed = load.outcomes["completed"], load.outcomes["failed"]
    per_job = max(1, completed)
    return {
        "config": config,
        "engine": engine,
        "render_depth": depth or "default",
        "seconds": round(elapsed, 2),
        "completed": completed,
        "failed": failed,
        "jobs_per_s": round(completed / elapsed, 2),
        "pipeline_cpu_ms_per_job": round(sum(cpu.values()) * 1000 / per_job, 2),
        "cpu_ms_per_job": {name: round(s * 1000 / per_job, 2) for name, s in cpu.items()},
        "cpu_share": {name: round(s / elapsed, 2) for name, s in cpu.items()},
        "load_generator_cpu_ms_per_job": round(bench_cpu * 1000 / per_job, 2),
        "saturating_process": hottest,
        "profile": spy,
        "peak_rss_mib": peak_rss,
        "state_files_bytes": files,
        "load_before": load_before,
        "load_after": _stack.load_average(),
    }


def state_files(data_dir: Path) -> dict[str, int]:
    """Sizes of the state database files and the folders the pipeline keeps."""
    sizes: dict[str, int] = {}
    for path in sorted(data_dir.iterdir()):
        if path.is_file():
            sizes[path.name] = _size(path)
        else:  # the workers keep changing these folders: skip what vanishes mid-walk
            sizes[path.name + "/"] = sum(
                _size(Path(root) / name) for root, _, names in os.walk(path) for name in names
            )
    return sizes


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    # Interleaved: each configuration under each engine, in turn.
    for config in args.config or ["1/2/1/1/1"]:
        for engine in args.engine or ["processes"]:
            for depth in args.render_depth or [0]:
                results.append(measure(args, config, engine, depth))
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--in-flight", type=int, default=64)
    p.add_argument("--config", action="append", help="intake/fetch/render/upload/notify workers")
    p.add_argument(
        "--engine", action="append", choices=("processes", "threads"), help="local_engine"
    )
    p.add_argument(
        "--render-depth", action="append", type=int, help="local_render_depth (jobs per worker)"
    )
    p.add_argument(
        "--render-ms", type=float, default=0.0, help="the double's render time per job (sleep)"
    )
    p.add_argument("--comfyui-url", default="")
    p.add_argument("--profile-s", type=float, default=5.0)
    p.add_argument("--cap", type=int, default=1000, help="the tenant's per-user active-job cap")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    return p


def main() -> None:
    args = parser().parse_args()
    results = run(args)
    _stack.print_table(
        f"sustained, {args.in_flight} in flight, {args.seconds:g} s per configuration; "
        f"comfyui={'double' if not args.comfyui_url else args.comfyui_url}",
        [
            "workers i/f/r/u/n",
            "engine",
            "depth",
            "jobs/s",
            "completed",
            "failed",
            "CPU ms/job",
            "saturating",
            "load",
        ],
        [
            [
                r["config"],
                r["engine"],
                r["render_depth"],
                r["jobs_per_s"],
                r["completed"],
                r["failed"],
                r["pipeline_cpu_ms_per_job"],
                r["saturating_process"],
                r["load_after"],
            ]
            for r in results
        ],
    )
    for r in results:
        _stack.print_table(
            f"CPU per completed job, {r['config']} ({r['engine']})",
            ["process", "CPU ms/job", "CPU share"],
            [[n, r["cpu_ms_per_job"][n], r["cpu_share"][n]] for n in sorted(r["cpu_ms_per_job"])]
            + [["(load generator)", r["load_generator_cpu_ms_per_job"], ""]],
        )
        if isinstance(r["profile"], list):
            _stack.print_table(
                f"py-spy, {r['saturating_process']}: hottest functions (self samples)",
                ["function", "samples"],
                r["profile"],
            )
        else:
            print(f"\nprofile of {r['saturating_process']}: {r['profile']}")
    if args.json:
        first = results[0]
        _stack.print_json(
            {
                "bench": "throughput",
                "jobs_per_s": first["jobs_per_s"],
                "completed": first["completed"],
                "failed": first["failed"],
                "pipeline_cpu_ms_per_job": first["pipeline_cpu_ms_per_job"],
                "saturating_process": first["saturating_process"],
                "load_after": first["load_after"],
                "configs": results,
                "pid": os.getpid(),
            }
        )


if __name__ == "__main__":
    main()
