"""The benchmarks in scripts/bench/ keep working: each runs in a tiny size and prints its
JSON line with the keys the issue names. These are not timed tests: no number is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT as ROOT

BENCH = ROOT / "scripts" / "bench"


def run_bench(name: str, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_SAAS_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, str(BENCH / name), *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    report: dict[str, object] = json.loads(last)
    return report


@pytest.mark.timeout(300)
def test_overhead_prints_its_keys() -> None:
    report = run_bench("overhead.py", "--jobs", "2")
    for key in ("baseline_p50_ms", "pipeline_p50_ms", "pipeline_p99_ms", "overhead_p50_ms"):
        assert isinstance(report[key], float | int)
    assert report["overhead_p99_ms"] is not None
    assert report["jobs"] == 2
    assert report["failed"] == 0


@pytest.mark.timeout(300)
def test_throughput_prints_its_keys() -> None:
    report = run_bench("throughput.py", "--seconds", "1", "--in-flight", "4", "--profile-s", "0")
    assert {"jobs_per_s", "completed", "failed"} <= report.keys()
    assert report["failed"] == 0


@pytest.mark.timeout(300)
def test_ingress_prints_every_endpoint() -> None:
    report = run_bench(
        "ingress.py",
        "--seconds",
        "1",
        "--connections",
        "4",
        "--tool",
        "python",
        "--open-loop-rate",
        "50",
    )
    endpoints = report["endpoints"]
    assert isinstance(endpoints, dict)
    assert set(endpoints) == {"GET /health", "GET /v1/jobs/{id}", "GET /v1/jobs", "POST /v1/jobs"}
    assert all({"req_per_s", "p95_ms", "errors"} <= set(r) for r in endpoints.values())
    open_loop = report["open_loop"]
    assert isinstance(open_loop, dict)
    assert open_loop["requests"] == 50 and open_loop["errors"] == 0


@pytest.mark.timeout(300)
def test_admission_counts_are_exact() -> None:
    report = run_bench("admission.py", "--bursts", "8", "--caps", "5,1000", "--per-cap", "2")
    assert report["all_exact"] is True  # strict admission is the one thing checked
    assert isinstance(report["caps"], list) and len(report["caps"]) == 2


@pytest.mark.timeout(300)
def test_memory_prints_rss_and_files() -> None:
    report = run_bench("memory.py", "--seconds", "1", "--in-flight", "4")
    peak = report["peak_rss_mib"]
    assert isinstance(peak, dict) and "ingress+supervisor" in peak
    files = report["state_files_bytes"]
    assert isinstance(files, dict) and "state.sqlite3" in files


@pytest.mark.timeout(120)
def test_webhook_post_reuses_one_connection() -> None:
    report = run_bench("webhook_post.py", "--posts", "3")
    assert {"cpu_ms_p50", "wall_ms_p50", "posts"} <= set(report)
    assert report["connections"] == 1


def test_bench_folder_is_complete() -> None:
    names = {p.name for p in Path(BENCH).glob("*.py")}
    assert {"overhead.py", "throughput.py", "ingress.py", "admission.py", "memory.py"} <= names
