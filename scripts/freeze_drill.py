"""The freeze drill (issue #11): a job that blocks ComfyUI inside one node, then another
tenant's job; prints how long from the stuck node to the next job running and completing.

    PYTHONPATH=. python3 scripts/freeze_drill.py --port 8195 \\
        --comfyui-cmd "/work/comfy/venv/bin/python /work/comfy/src/main.py --cpu \\
            --listen 127.0.0.1 --port 8195 --base-directory /work/comfy/base-8195"

It runs the local pipeline (2 render workers) with that command as the managed ComfyUI
child. Tenant A's job is `RegexMatch` with `^(a+)+$` on `"a" * 40 + "b"` (catastrophic
backtracking: ComfyUI's worker holds Python's GIL inside one node, so neither
`/interrupt` nor even `/system_stats` is answered), allowed for the drill through
`node_allowlist`. Tenant B's trivial job is submitted while A's holds the renderer. The
last line is JSON: `{"stuck_to_next_running_s", "stuck_to_next_completed_s", ...}`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.core.config import Settings
from app.core.models import JobStatus
from app.core.schemas import JobRequest
from app.deploy.local.runner import Pipeline
from app.engine.deps import Deps, build_deps
from app.stages.intake import admit

TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}


def regex_bomb() -> dict[str, Any]:
    return {
        "1": {
            "class_type": "RegexMatch",
            "inputs": {
                "string": "a" * 40 + "b",
                "regex_pattern": "^(a+)+$",
                "case_insensitive": False,
                "multiline": False,
                "dotall": False,
            },
        },
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


def trivial(seed: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "n"}},
    }


def answers(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return httpx.get(f"{url}/system_stats", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait(what: str, check: Any, timeout_s: float, interval_s: float = 0.05) -> float:
    until = time.monotonic() + timeout_s
    while time.monotonic() < until:
        if check():
            return time.monotonic()
        time.sleep(interval_s)
    raise SystemExit(f"timed out waiting for {what}")


def status(deps: Deps, job_id: str) -> JobStatus:
    return deps.jobs.get(job_id).status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8195)
    parser.add_argument("--comfyui-cmd", required=True)
    parser.add_argument("--job-timeout-s", type=int, default=10)
    parser.add_argument("--grace-s", type=float, default=Settings().render_interrupt_grace_s)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    if answers(url):
        raise SystemExit(f"something already answers on {url}: stop it, the drill starts its own")
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="freeze-drill-")),
        comfyui_url=url,
        comfyui_cmd=args.comfyui_cmd,
        local_render_workers=2,
        render_interrupt_grace_s=args.grace_s,
        node_allowlist=["RegexMatch"],
        public_url="http://127.0.0.1:9",
    )
    runner = Pipeline(settings)
    runner.start()
    try:
        deps = build_deps(settings)
        wait("ComfyUI up", lambda: answers(url), 300, 0.5)
        a = deps.tenants.create("tenant-a").tenant
        b = deps.tenants.create("tenant-b").tenant
        warm = admit(deps, b, "bob", JobRequest(workflow=trivial(1))).job
        wait("warm-up job", lambda: status(deps, warm.id) in TERMINAL, 300)
        bomb = admit(
            deps, a, "alice", JobRequest(workflow=regex_bomb(), timeout_s=args.job_timeout_s)
        ).job
        wait("the bomb rendering", lambda: deps.jobs.get(bomb.id).stage.value == "render", 60)
        # The stuck node: from the moment ComfyUI stops answering at all.
        stuck_at = wait("ComfyUI frozen", lambda: not answers(url, 0.5), 60, 0.0)
        nxt = admit(deps, b, "bob", JobRequest(workflow=trivial(int(time.time()) % 9999))).job
        running_at = wait(
            "the next job running",
            lambda: (
                deps.jobs.get(nxt.id).progress > 0 or status(deps, nxt.id) is JobStatus.COMPLETED
            ),
            300,
        )
        done_at = wait("the next job done", lambda: status(deps, nxt.id) in TERMINAL, 300)
        failed, done = deps.jobs.get(bomb.id), deps.jobs.get(nxt.id)
        result = {
            "stuck_to_next_running_s": round(running_at - stuck_at, 1),
            "stuck_to_next_completed_s": round(done_at - stuck_at, 1),
            "blocking_job": failed.status.value,
            "blocking_error": failed.error.code if failed.error else None,
            "next_job": done.status.value,
            "renderer_restarts": runner.comfy.restarts if runner.comfy else 0,
            "job_timeout_s": args.job_timeout_s,
            "render_interrupt_grace_s": args.grace_s,
        }
        print(f"blocking job: {failed.status.value} ({result['blocking_error']})")
        print(f"stuck node -> next job running:   {result['stuck_to_next_running_s']} s")
        print(f"stuck node -> next job completed: {result['stuck_to_next_completed_s']} s")
        print(json.dumps(result))
    finally:
        runner.shutdown(grace_s=10)


if __name__ == "__main__":
    main()
