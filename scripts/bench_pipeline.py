"""Benchmark the local pipeline's own overhead per job (everything but ComfyUI's work).

    python scripts/bench_pipeline.py [--jobs 40] [--comfyui-url URL]

Starts the real local pipeline (worker processes over SQLite) against ComfyUI at
`--comfyui-url`, or against the protocol double from the test suite when none is given,
submits `--jobs` small jobs (one 64x64 input fetched over HTTP, invert, save), and
reports throughput and per-stage timings from the jobs' own records. `overhead_s` is the
total minus the render stage: queueing, fetch, upload and hand-offs.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.core.logs import configure_logging  # noqa: E402
from app.core.models import JobStatus  # noqa: E402
from app.core.schemas import JobRequest, timings_of  # noqa: E402
from app.deploy.local.runner import Pipeline  # noqa: E402
from app.engine.deps import build_deps  # noqa: E402
from app.stages.intake import admit  # noqa: E402


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 240)).save(out, format="PNG")
    return out.getvalue()


def _workflow(i: int) -> dict[str, object]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": f"bench{i}"},
        },
    }


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 3),
        "max": round(ordered[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--comfyui-url", default="")
    args = parser.parse_args()
    from tests.comfy_double import ComfyDouble
    from tests.support.http_servers import serve

    with tempfile.TemporaryDirectory() as tmp, serve("127.0.0.2") as site:
        double = None
        url = args.comfyui_url
        if not url:
            double = ComfyDouble(Path(tmp) / "comfy")
            url = double.start()
        site.files["/in.png"] = (_png(), "image/png")
        settings = Settings(
            data_dir=Path(tmp) / "data",
            comfyui_url=url,
            fetch_allow_http=True,
            fetch_allow_cidrs=["127.0.0.2/32"],
            fetch_allowed_ports=[site.port],
            log_level="WARNING",
        )
        configure_logging("WARNING")
        deps = build_deps(settings)
        tenant = deps.tenants.create("bench", max_active_jobs_per_user=args.jobs).tenant
        pipeline = Pipeline(settings)
        pipeline.start()
        try:
            # Warm-up: one job through every stage, so worker start-up is not measured.
            warm = admit(
                deps,
                tenant,
                "bench-user",
                JobRequest(
                    workflow=_workflow(-1),
                    inputs=[{"name": "in.png", "url": site.url("/in.png")}],  # type: ignore[list-item]
                ),
            ).job.id
            while not deps.jobs.get(warm).is_terminal:
                time.sleep(0.05)
            started = time.perf_counter()
            ids = []
            for i in range(args.jobs):
                request = JobRequest(
                    workflow=_workflow(i), inputs=[{"name": "in.png", "url": site.url("/in.png")}]
                )  # type: ignore[list-item]
                ids.append(admit(deps, tenant, "bench-user", request).job.id)
            admitted_s = time.perf_counter() - started
            while True:
                jobs = [deps.jobs.get(i) for i in ids]
                if all(j.is_terminal for j in jobs):
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            # One job at a time: the latency a lone job sees, queueing behind nobody.
            lone = []
            for i in range(5):
                request = JobRequest(
                    workflow=_workflow(1000 + i),
                    inputs=[{"name": "in.png", "url": site.url("/in.png")}],
                )  # type: ignore[list-item]
                job_id = admit(deps, tenant, "bench-user", request).job.id
                while not deps.jobs.get(job_id).is_terminal:
                    time.sleep(0.01)
                lone.append(deps.jobs.get(job_id))
        finally:
            pipeline.shutdown()
            if double is not None:
                double.stop()
    completed = [j for j in jobs if j.status is JobStatus.COMPLETED]
    timings = [timings_of(j) for j in completed]
    report = {
        "comfyui": "double" if not args.comfyui_url else args.comfyui_url,
        "jobs": args.jobs,
        "completed": len(completed),
        "admit_per_job_ms": round(admitted_s / args.jobs * 1000, 2),
        "wall_s": round(elapsed, 2),
        "jobs_per_s": round(args.jobs / elapsed, 2),
        "queue_wait_s": _stats([t.queue_wait_s or 0 for t in timings]),
        "fetch_s": _stats([t.fetch_s or 0 for t in timings]),
        "render_s": _stats([t.render_s or 0 for t in timings]),
        "upload_s": _stats([t.upload_s or 0 for t in timings]),
        "total_s": _stats([t.total_s or 0 for t in timings]),
        "overhead_s": _stats([(t.total_s or 0) - (t.render_s or 0) for t in timings]),
        "lone_job_overhead_s": _stats(
            [(t.total_s or 0) - (t.render_s or 0) for t in map(timings_of, lone)]
        ),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
