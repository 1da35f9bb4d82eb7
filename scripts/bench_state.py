"""Benchmark the state core: round trips per operation and throughput on SQLite.

    python scripts/bench_state.py [--processes 8] [--jobs 300]

Round trips matter on Modal, where each dict operation is a network call of a few dozen
milliseconds; throughput and latency are measured on the local SQLite backend with real
processes contending for the same caps.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.errors import AdmissionRejected
from app.core.models import JobStatus
from app.store.backends.memory import MemoryBackend
from app.store.backends.sqlite import SqliteBackend
from app.store.jobs import JobStore, Limits, NewJob

WORKFLOW: dict[str, object] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}},
}


class CountingBackend:
    """Counts every dict operation made through it."""

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.ops = 0

    def queue(self, name: str) -> Any:
        return self.inner.queue(name)

    def kv(self, name: str) -> Any:
        kv = self.inner.kv(name)
        outer = self

        class Counted:
            def __getattr__(self, attr: str) -> Any:
                fn = getattr(kv, attr)

                def call(*args: Any, **kwargs: Any) -> Any:
                    outer.ops += 1
                    return fn(*args, **kwargs)

                return call

        return Counted()

    def close(self) -> None:
        pass


def round_trips() -> dict[str, int]:
    backend = CountingBackend()
    store = JobStore(backend, time.time)  # type: ignore[arg-type]
    limits = Limits(max_active_per_user=5, max_active_per_tenant=50, rate_per_minute=1000)
    result: dict[str, int] = {}
    for active in range(5):
        backend.ops = 0
        store.create(NewJob("t", "u", WORKFLOW, 600), f"j{active}", limits)
        result[f"create_with_{active}_active"] = backend.ops
    backend.ops = 0
    try:
        store.create(NewJob("t", "u", WORKFLOW, 600), "rejected", limits)
    except AdmissionRejected:
        pass
    result["create_rejected_at_cap"] = backend.ops
    backend.ops = 0
    store.finish("j0", JobStatus.COMPLETED)
    result["finish"] = backend.ops
    backend.ops = 0
    store.get("j1")
    result["get"] = backend.ops
    backend.ops = 0
    store.list_for_user("t", "u", limit=20)
    result["list_page_of_4"] = backend.ops
    return result


def _worker(db: str, worker: int, jobs: int, out: Any) -> None:
    store = JobStore(SqliteBackend(db), time.time)
    limits = Limits(max_active_per_user=5)
    latencies: list[float] = []
    for i in range(jobs):
        started = time.perf_counter()
        job_id = f"w{worker}-{i}"
        try:
            store.create(NewJob("t", f"user{worker}", WORKFLOW, 600), job_id, limits)
            store.finish(job_id, JobStatus.COMPLETED)
        except AdmissionRejected:
            pass
        latencies.append(time.perf_counter() - started)
    out.put(latencies)


def throughput(processes: int, jobs: int) -> dict[str, float]:
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.sqlite3")
        SqliteBackend(db).close()
        out = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(db, w, jobs, out)) for w in range(processes)]
        started = time.perf_counter()
        for p in procs:
            p.start()
        latencies = [lat for _ in procs for lat in out.get()]
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "processes": processes,
        "jobs": len(latencies),
        "elapsed_s": round(elapsed, 3),
        "jobs_per_s": round(len(latencies) / elapsed, 1),
        "create_finish_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "create_finish_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def list_page(calls: int = 300, jobs: int = 100, page: int = 20) -> dict[str, float]:
    """Time of `list_for_user` for one page on SQLite (the store's part of GET /v1/jobs)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = JobStore(SqliteBackend(Path(tmp) / "list.sqlite3"), time.time)
        for i in range(jobs):
            store.create(NewJob("t", "u", WORKFLOW, 600), f"j{i}", Limits(max_active_per_user=jobs))
        took: list[float] = []
        for _ in range(calls):
            started = time.perf_counter()
            store.list_for_user("t", "u", limit=page)
            took.append(time.perf_counter() - started)
    return {
        "page": page,
        "calls": calls,
        "p50_ms": round(statistics.median(took) * 1000, 3),
        "mean_ms": round(statistics.fmean(took) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=300, help="per process")
    args = parser.parse_args()
    print(
        json.dumps(
            {
                "dict_round_trips": round_trips(),
                "sqlite_list_page": list_page(),
                "sqlite_create_and_finish": throughput(args.processes, args.jobs),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
