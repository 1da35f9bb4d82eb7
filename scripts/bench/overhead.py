"""Overhead per job: ComfyUI alone against the whole pipeline, interleaved in one run.

    python scripts/bench/overhead.py [--jobs 60] [--comfyui-url URL] [--json]

For the same trivial workflow (64x64 EmptyImage -> ImageInvert -> SaveImage, a new color
each run so ComfyUI's cache never answers) it times, one job at a time and rotating the
order every round:

* `baseline`: ComfyUI alone, as a lean client uses it: one websocket for the run, POST
  /prompt, wait for the prompt's end on the socket, GET /history;
* `http`: the pipeline over HTTP (`comfyui-saas dev`): POST /v1/jobs, then GET
  /v1/jobs/{id} every `--poll-ms` until it ends (one reused connection);
* `client`: the pipeline through the Python queue client (enqueue, wait).

Overhead = pipeline - baseline, per percentile. Against the protocol double by default.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from contextlib import ExitStack
from typing import Any

import _stack
import httpx
from websockets.sync.client import connect

from app.clients.queue_client import Client


class Baseline:
    """ComfyUI alone: one websocket, POST /prompt, wait on the socket, GET /history."""

    def __init__(self, url: str) -> None:
        self.client_id = uuid.uuid4().hex
        self.http = httpx.Client(base_url=url, timeout=30, trust_env=False)
        self._closing = ExitStack()
        self.ws = self._closing.enter_context(
            connect(url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}")
        )

    def run(self, graph: dict[str, Any]) -> None:
        response = self.http.post("/prompt", json={"prompt": graph, "client_id": self.client_id})
        response.raise_for_status()
        prompt_id = response.json()["prompt_id"]
        while True:
            frame = self.ws.recv(timeout=30)
            if isinstance(frame, bytes):
                continue
            message = json.loads(frame)
            data = message.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if message["type"] in ("execution_success", "execution_error") or (
                message["type"] == "executing" and data.get("node") is None
            ):
                break
        self.http.get(f"/history/{prompt_id}").raise_for_status()

    def close(self) -> None:
        self._closing.close()
        self.http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=60, help="jobs per mode")
    parser.add_argument("--comfyui-url", default="")
    parser.add_argument("--poll-ms", type=float, default=2.0)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    poll_s = args.poll_ms / 1000
    times: dict[str, list[float]] = {"baseline": [], "http": [], "client": []}
    failed = 0
    load_before = _stack.load_average()
    with _stack.dev_stack(args.comfyui_url or None) as stack:
        baseline = Baseline(stack.comfy_url)
        http = httpx.Client(
            base_url=stack.url, headers=stack.headers(), timeout=30, trust_env=False
        )
        client = Client.from_settings(stack.settings, api_key=stack.api_key, user_id="bench")
        color = int(time.time()) % 100_000 * 97

        def one_http() -> None:
            nonlocal failed
            job = http.post("/v1/jobs", json={"workflow": _stack.workflow(color)})
            job.raise_for_status()
            status = _stack.wait_terminal(http, job.json()["id"], poll_s, 60)
            failed += status != "completed"

        def one_client() -> None:
            nonlocal failed
            job_id = client.enqueue({"workflow": _stack.workflow(color)})
            failed += client.wait(job_id, timeout_s=60, poll_s=poll_s).status != "completed"

        modes = {
            "baseline": lambda: baseline.run(_stack.workflow(color)),
            "http": one_http,
            "client": one_client,
        }
        names = list(modes)
        for name in names:  # warm-up, not measured: first connections, first catalog read
            color += 1
            modes[name]()
        for round_ in range(args.jobs):
            order = names[round_ % 3 :] + names[: round_ % 3]
            for name in order:
                color += 1
                started = time.perf_counter()
                modes[name]()
                times[name].append(time.perf_counter() - started)
        baseline.close()
        http.close()
    stats = {name: _stack.summary_ms(values) for name, values in times.items()}
    rows = []
    for name in names:
        s = stats[name]
        ratio = round(s["p50"] / stats["baseline"]["p50"], 2) if stats["baseline"]["p50"] else 0
        rows.append([name, s["p50"], s["p95"], s["p99"], s["max"], ratio])
    for name in ("http", "client"):
        rows.append(
            [f"overhead ({name})"]
            + [round(stats[name][p] - stats["baseline"][p], 2) for p in ("p50", "p95", "p99")]
            + ["", ""]
        )
    load = _stack.load_average()
    _stack.print_table(
        f"one job at a time, {args.jobs} per mode, interleaved; "
        f"comfyui={'double' if not args.comfyui_url else args.comfyui_url}; load {load}",
        ["ms", "p50", "p95", "p99", "max", "x baseline p50"],
        rows,
    )
    report = {
        "bench": "overhead",
        "comfyui": args.comfyui_url or "double",
        "jobs": args.jobs,
        "failed": failed,
        "baseline_p50_ms": stats["baseline"]["p50"],
        "baseline_p95_ms": stats["baseline"]["p95"],
        "baseline_p99_ms": stats["baseline"]["p99"],
        "pipeline_p50_ms": stats["http"]["p50"],
        "pipeline_p95_ms": stats["http"]["p95"],
        "pipeline_p99_ms": stats["http"]["p99"],
        "client_p50_ms": stats["client"]["p50"],
        "client_p99_ms": stats["client"]["p99"],
        "overhead_p50_ms": round(stats["http"]["p50"] - stats["baseline"]["p50"], 2),
        "overhead_p99_ms": round(stats["http"]["p99"] - stats["baseline"]["p99"], 2),
        "client_overhead_p50_ms": round(stats["client"]["p50"] - stats["baseline"]["p50"], 2),
        "client_overhead_p99_ms": round(stats["client"]["p99"] - stats["baseline"]["p99"], 2),
        "ratio_p50": round(stats["http"]["p50"] / stats["baseline"]["p50"], 2)
        if stats["baseline"]["p50"]
        else None,
        "load_before": load_before,
        "load_after": load,
    }
    if args.json:
        _stack.print_json(report)


if __name__ == "__main__":
    main()
