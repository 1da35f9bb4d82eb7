"""The ingress under load: GET /health, GET /v1/jobs/{id}, GET /v1/jobs, POST /v1/jobs.

    python scripts/bench/ingress.py [--seconds 10] [--connections 64] [--comfyui-url URL]
        [--open-loop-rate 500] [--json]

Each endpoint is hit at `--connections` concurrent connections for `--seconds` by `wrk`
(Debian: `apt-get install -y wrk`), or, without it, by a Python asyncio + httpx load
generator (which itself costs CPU on the same cores: prefer wrk). Reports req/s,
p50/p95/p99 latency, errors (non-2xx answers and socket errors) and the ingress
processes' CPU per request (from /proc). Goals on 2 cores:
GET /v1/jobs/{id} >= 2,000 req/s at 64 connections, POST >= 500 req/s.

Then `GET /v1/jobs/{id}` open-loop at `--open-loop-rate` requests per second (0: skip):
each request is sent at its scheduled time whatever the earlier ones did, and its
latency counts from that time (no coordinated omission), over up to `--connections`
connections. The goal: p95 <= 10 ms at 500 req/s. The sender is Python (asyncio + httpx)
on the same cores, so its CPU is part of the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import _http
import _stack
import httpx

#: wrk's `done` hook: one JSON line with the numbers wrk itself keeps (microseconds).
_WRK_REPORT = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"p50":%d,"p95":%d,"p99":%d}\\n',
    summary.requests, summary.duration, errors,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def _wrk(
    url: str,
    method: str,
    headers: dict[str, str],
    body: str | None,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    script = _WRK_REPORT
    if body is not None:
        script = f"wrk.method = {json.dumps(method)}\nwrk.body = {json.dumps(body)}\n" + script
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    command = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{max(1, round(seconds))}s"]
    command += ["--timeout", "10s", "-s", file.name]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    Path(file.name).unlink()
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    return {
        "req_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "requests": raw["requests"],
        "errors": raw["errors"],
        "p50_ms": round(raw["p50"] / 1000, 2),
        "p95_ms": round(raw["p95"] / 1000, 2),
        "p99_ms": round(raw["p99"] / 1000, 2),
    }


def _result(latencies: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    """One load run's numbers, as the wrk runs report them."""
    stats = _stack.summary_ms(latencies)
    return {
        "req_per_s": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": stats["p50"],
        "p95_ms": stats["p95"],
        "p99_ms": stats["p99"],
    }


def _python_load(
    url: str,
    method: str,
    headers: dict[str, str],
    body: str | None,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=10, trust_env=False) as client:
            end = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal errors
                while time.perf_counter() < end:
                    started = time.perf_counter()
                    try:
                        response = await client.request(method, url, headers=headers, content=body)
                        errors += response.status_code >= 400
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed = time.perf_counter() - started
        return _result(latencies, elapsed, errors)

    return asyncio.run(go())


def _open_loop(
    url: str, headers: dict[str, str], rate: float, seconds: float, connections: int
) -> dict[str, Any]:
    """Requests due on a fixed schedule; each one's latency counts from when it was due.

    A plain HTTP/1.1 keep-alive client on asyncio streams (an httpx pool costs more CPU
    per request than the server, on the same cores): `connections` senders take due
    requests in order, so a slow answer delays the ones queued behind it, as it would a
    real client's, and that wait is in their latency.
    """
    target = _http.endpoint(url, headers=headers)

    async def go() -> dict[str, Any]:
        due: asyncio.Queue[float | None] = asyncio.Queue()
        latencies: list[float] = []
        errors = 0

        async def sender() -> None:
            nonlocal errors
            reader, writer = await target.connect()
            try:
                while (when := await due.get()) is not None:
                    try:
                        writer.write(target.request)
                        errors += await _http.read_answer(reader) >= 400
                    except _http.CONNECTION_ERRORS:
                        errors += 1
                        writer.close()
                        reader, writer = await target.connect()
                    latencies.append(time.perf_counter() - when)
            finally:
                writer.close()

        senders = [asyncio.create_task(sender()) for _ in range(connections)]
        start = time.perf_counter() + 0.2  # the connections open first
        count = int(rate * seconds)
        for n in range(count):
            when = start + n / rate
            await asyncio.sleep(max(0.0, when - time.perf_counter()))
            due.put_nowait(when)
        for _ in senders:
            due.put_nowait(None)
        await asyncio.gather(*senders)
        elapsed = time.perf_counter() - start
        return {"rate_asked": rate, **_result(latencies, elapsed, errors)}

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="per endpoint")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--comfyui-url", default="")
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--ingress-workers", type=int, default=0, help="COMFYUI_SAAS_LOCAL_INGRESS_WORKERS"
    )
    parser.add_argument(
        "--open-loop-rate", type=float, default=500.0, help="GET /v1/jobs/{id} per s; 0: skip"
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    env = (
        {"COMFYUI_SAAS_LOCAL_INGRESS_WORKERS": str(args.ingress_workers)}
        if args.ingress_workers
        else {}
    )
    tool = args.tool
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "python"
    load = _wrk if tool == "wrk" else _python_load
    results: dict[str, dict[str, Any]] = {}
    with _stack.dev_stack(args.comfyui_url or None, env) as stack:
        headers = stack.headers()
        body = json.dumps({"workflow": _stack.workflow(7)})
        with httpx.Client(base_url=stack.url, headers=headers, trust_env=False) as http:
            ids = [
                http.post(
                    "/v1/jobs", content=body, headers={"Content-Type": "application/json"}
                ).json()["id"]
                for _ in range(25)
            ]
            _stack.wait_terminal(http, ids[-1], 0.05, 60)
        json_headers = headers | {"Content-Type": "application/json"}
        endpoints = [
            ("GET /health", "GET", "/health", {}, None),
            ("GET /v1/jobs/{id}", "GET", f"/v1/jobs/{ids[0]}", headers, None),
            ("GET /v1/jobs", "GET", "/v1/jobs?limit=20", headers, None),
            ("POST /v1/jobs", "POST", "/v1/jobs", json_headers, body),  # last: see below
        ]
        ingress = {n: p for n, p in stack.processes().items() if n.startswith("ingress")}
        open_loop: dict[str, Any] | None = None
        for name, method, path, hdrs, payload in endpoints:
            if method == "POST" and args.open_loop_rate > 0:
                # Before the POSTs: the jobs they admit keep the pipeline busy after.
                open_loop = _open_loop(
                    f"{stack.url}/v1/jobs/{ids[0]}",
                    headers,
                    args.open_loop_rate,
                    args.seconds,
                    args.connections,
                )
                open_loop["load"] = _stack.load_average()
            cpu_before = sum(_stack.proc_cpu_s(pid) for pid in ingress.values())
            results[name] = load(
                stack.url + path, method, hdrs, payload, args.seconds, args.connections
            )
            # CPU of the ingress processes per answered request: on a loaded machine
            # req/s says how much CPU the others left; this says what a request costs.
            cpu = sum(_stack.proc_cpu_s(pid) for pid in ingress.values()) - cpu_before
            results[name]["ingress_cpu_ms_per_request"] = round(
                cpu * 1000 / max(1, results[name]["requests"]), 3
            )
            results[name]["load"] = _stack.load_average()
    _stack.print_table(
        f"ingress at {args.connections} connections, {args.seconds:g} s each, tool={tool}",
        [
            "endpoint",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "errors",
            "requests",
            "ingress CPU ms/req",
            "load",
        ],
        [
            [
                n,
                r["req_per_s"],
                r["p50_ms"],
                r["p95_ms"],
                r["p99_ms"],
                r["errors"],
                r["requests"],
                r["ingress_cpu_ms_per_request"],
                r["load"],
            ]
            for n, r in results.items()
        ],
    )
    if open_loop is not None:
        _stack.print_table(
            f"GET /v1/jobs/{{id}} open-loop at {args.open_loop_rate:g} req/s, {args.seconds:g} s",
            ["req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "requests", "load"],
            [
                [
                    open_loop["req_per_s"],
                    open_loop["p50_ms"],
                    open_loop["p95_ms"],
                    open_loop["p99_ms"],
                    open_loop["errors"],
                    open_loop["requests"],
                    open_loop["load"],
                ]
            ],
        )
    if args.json:
        _stack.print_json(
            {
                "bench": "ingress",
                "tool": tool,
                "connections": args.connections,
                "endpoints": results,
                "open_loop": open_loop,
            }
        )


if __name__ == "__main__":
    main()
