"""Admission: bursts at a cap, and admission time against the size of the cap.

    python scripts/bench/admission.py [--bursts 8,100,1000] [--caps 5,100,10000,100000,1000000]
        [--json]

* Bursts: `n` POST /v1/jobs at once (up to 256 connections) from one fresh user whose
  cap is n/2 (at least 5), against `comfyui-saas dev` whose ComfyUI is unreachable, so
  no job ends and frees its slot during the burst: exactly `cap` must be admitted and
  the rest refused with 429. Reports latency p50/p95/p99 and the exact counts.
* Admission time against the cap: in-process `admit` over SQLite (the double gives the
  node catalog) for a tenant capped at each size, five admissions per size, so the
  median shows whether admission grows with the cap. It must be flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _http
import _stack

from app.core.config import Settings
from app.core.logs import configure_logging
from app.core.schemas import JobRequest
from app.engine.deps import build_deps
from app.stages.intake import admit

#: Nothing listens here: render leaves every job queued, so no slot is freed mid-burst.
NO_COMFY = "http://127.0.0.1:9"


def burst(stack: _stack.Stack, n: int, cap: int, user: str) -> dict[str, Any]:
    failures: list[str] = []

    body = json.dumps({"workflow": _stack.workflow(n)}).encode()
    headers = stack.headers(user) | {"Content-Type": "application/json"}
    target = _http.endpoint(f"{stack.url}/v1/jobs", "POST", headers, body)

    async def go() -> tuple[list[float], list[int]]:
        # Every request is due at once; up to 256 connections send them in turn, and each
        # one's latency counts from the burst's start (a plain client: see `_http`).
        pending = list(range(n))
        latencies: list[float] = []
        codes: list[int] = []
        began = time.perf_counter()

        async def sender() -> None:
            reader, writer = await target.connect()
            try:
                while pending:
                    pending.pop()
                    try:
                        writer.write(target.request)
                        code = await _http.read_answer(reader)
                    except _http.CONNECTION_ERRORS as exc:
                        code = 0
                        failures.append(type(exc).__name__)
                        writer.close()
                        reader, writer = await target.connect()
                    latencies.append(time.perf_counter() - began)
                    codes.append(code)
            finally:
                writer.close()

        await asyncio.gather(*(sender() for _ in range(min(n, 256))))
        return latencies, codes

    started = time.perf_counter()
    latencies, codes = asyncio.run(go())
    wall = time.perf_counter() - started
    admitted = sum(1 for c in codes if c in (200, 201, 202))
    refused = codes.count(429)
    return {
        "burst": n,
        "cap": cap,
        "admitted": admitted,
        "refused_429": refused,
        "other": n - admitted - refused,
        # What the others were (0: no answer, e.g. a connection error): a refusal that
        # is not a 429 is a bug to find, not noise.
        "other_codes": {
            str(c): codes.count(c) for c in sorted(set(codes)) if c not in (200, 201, 202, 429)
        },
        "client_errors": sorted(set(failures)),
        "exact": admitted == cap and refused == n - cap,
        "wall_ms": round(wall * 1000, 1),
        "latency_ms": _stack.summary_ms(latencies),
        "load": _stack.load_average(),
    }


def cap_curve(caps: list[int], per_cap: int) -> list[dict[str, Any]]:
    configure_logging("WARNING")  # in-process admissions would log each job
    rows = []
    with tempfile.TemporaryDirectory() as tmp, _stack.comfyui(None, Path(tmp)) as comfy:
        settings = Settings(data_dir=Path(tmp) / "data", comfyui_url=comfy, log_level="WARNING")
        deps = build_deps(settings)
        warm = deps.tenants.create("warm", max_active_jobs_per_user=10).tenant
        admit(deps, warm, "u", JobRequest(workflow=_stack.workflow(0)))  # catalog, connections
        for cap in caps:
            tenant = deps.tenants.create(f"cap{cap}", max_active_jobs_per_user=cap).tenant
            times = []
            for i in range(min(per_cap, cap)):
                started = time.perf_counter()
                admit(deps, tenant, "u", JobRequest(workflow=_stack.workflow(i)))
                times.append((time.perf_counter() - started) * 1000)
            rows.append(
                {
                    "cap": cap,
                    "admit_p50_ms": round(statistics.median(times), 2),
                    "admit_max_ms": round(max(times), 2),
                    "load": _stack.load_average(),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bursts", default="8,100,1000")
    parser.add_argument("--caps", default="5,100,10000,100000,1000000")
    parser.add_argument("--per-cap", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    sizes = [int(x) for x in args.bursts.split(",")]
    bursts = []
    with _stack.dev_stack(NO_COMFY, cap=_stack.BIG_CAP) as stack:
        from app.engine.deps import build_deps as deps_for

        registry = deps_for(stack.settings).tenants
        for n in sizes:
            cap = max(5, n // 2)
            tenant = registry.create(f"burst{n}", max_active_jobs_per_user=cap)
            stack_for = _stack.Stack(**{**stack.__dict__, "api_key": tenant.api_key})
            bursts.append(burst(stack_for, n, cap, "burst-user"))
    _stack.print_table(
        "bursts at a per-user cap of n/2 (no job ends during a burst)",
        [
            "burst",
            "cap",
            "admitted",
            "429",
            "other",
            "exact",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "wall ms",
            "load",
        ],
        [
            [
                b["burst"],
                b["cap"],
                b["admitted"],
                b["refused_429"],
                b["other"],
                b["exact"],
                b["latency_ms"]["p50"],
                b["latency_ms"]["p95"],
                b["latency_ms"]["p99"],
                b["wall_ms"],
                b["load"],
            ]
            for b in bursts
        ],
    )
    curve = cap_curve([int(x) for x in args.caps.split(",")], args.per_cap)
    _stack.print_table(
        f"admission time against the cap ({args.per_cap} admissions each, in-process, SQLite)",
        ["cap", "admit p50 ms", "admit max ms", "load"],
        [[r["cap"], r["admit_p50_ms"], r["admit_max_ms"], r["load"]] for r in curve],
    )
    medians = [r["admit_p50_ms"] for r in curve]
    flatness = round(max(medians) / min(medians), 2) if min(medians) > 0 else None
    print(f"\nslowest / fastest median admission across caps: {flatness}x")
    if args.json:
        _stack.print_json(
            {
                "bench": "admission",
                "bursts": bursts,
                "caps": curve,
                "cap_flatness": flatness,
                "all_exact": all(b["exact"] for b in bursts),
            }
        )


if __name__ == "__main__":
    main()
