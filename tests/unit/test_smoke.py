"""The smoke checks, run against an in-process API that follows (or breaks) the contract."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Response

from app.smoke import (
    CheckResult,
    SmokeConfig,
    burst_verdict,
    run_all,
    slow_workflow,
    summarize,
    tiny_workflow,
)

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
KEYS = {"key-alice": "alice", "key-bob": "bob"}


def fake_api(*, cap: int = 5, leak_ownership: bool = False, polls_to_finish: int = 2) -> FastAPI:
    """Just enough of the API for the smoke checks; flags break one rule each."""
    api = FastAPI()
    jobs: dict[str, dict[str, Any]] = {}
    ids = itertools.count(1)

    def user(authorization: str | None) -> str:
        key = (authorization or "").removeprefix("Bearer ")
        if key not in KEYS:
            raise HTTPException(401)
        return KEYS[key]

    def owned(job_id: str, who: str) -> dict[str, Any]:
        job = jobs.get(job_id)
        if job is None or (job["user"] != who and not leak_ownership):
            raise HTTPException(404)
        return job

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/v1/jobs", status_code=202)
    def create(body: dict[str, Any], authorization: str | None = Header(None)) -> Any:
        who = user(authorization)
        active = [j for j in jobs.values() if j["user"] == who and j["status"] == "running"]
        if len(active) >= cap:
            raise HTTPException(429)
        job_id = f"job-{next(ids)}"
        jobs[job_id] = {"id": job_id, "user": who, "status": "running", "polls": 0,
                        "outputs": []}
        return {"id": job_id, "status": "queued"}

    @api.get("/v1/jobs/{job_id}")
    def read(job_id: str, authorization: str | None = Header(None)) -> Any:
        job = owned(job_id, user(authorization))
        job["polls"] += 1
        if job["status"] == "running" and job["polls"] >= polls_to_finish:
            job["status"] = "completed"
            job["outputs"] = [{"url": f"/files/{job_id}.png"}]
        return {k: v for k, v in job.items() if k in ("id", "status", "outputs")}

    @api.post("/v1/jobs/{job_id}/cancel", status_code=202)
    def cancel(job_id: str, authorization: str | None = Header(None)) -> Any:
        job = owned(job_id, user(authorization))
        if job["status"] == "running":
            job["status"] = "cancelled"
        return {"id": job_id, "status": job["status"]}

    @api.get("/files/{name}")
    def files(name: str) -> Response:
        return Response(PNG, media_type="image/png")

    return api


@contextmanager
def serve(api: FastAPI) -> Iterator[str]:
    """Run `api` on a free loopback port for the duration of the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test API did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_against(api: FastAPI, config: SmokeConfig) -> dict[str, Any]:
    with serve(api) as url, httpx.Client(base_url=url, timeout=10) as client:
        return run_all(client, config, url)


def _config(**overrides: Any) -> SmokeConfig:
    values: dict[str, Any] = {"api_key": "key-alice", "other_api_key": "key-bob",
                              "job_timeout_s": 5.0, "poll_interval_s": 0.0}
    values.update(overrides)
    return SmokeConfig(**values)


def _by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in summary["checks"]}


def test_every_check_passes_against_a_conforming_api() -> None:
    summary = run_against(fake_api(), _config())
    checks = _by_name(summary)
    assert list(checks) == ["health", "auth_401", "e2e", "ownership_404", "cancel", "burst_quota"]
    assert summary["ok"] is True, summary
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (6, 0, 0)
    assert checks["e2e"]["data"]["output_bytes"] == [len(PNG)]
    assert checks["burst_quota"]["data"]["codes"] == [202] * 5 + [429] * 3


def test_a_leaked_job_and_a_missing_cap_are_reported() -> None:
    summary = run_against(fake_api(cap=100, leak_ownership=True), _config())
    checks = _by_name(summary)
    assert summary["ok"] is False
    assert checks["ownership_404"]["ok"] is False and checks["ownership_404"]["detail"] == (
        "HTTP 200"
    )
    assert checks["burst_quota"]["ok"] is False
    assert checks["burst_quota"]["detail"] == "8 x 202 (want 5 x 202, 3 x 429)"


def test_a_job_that_never_finishes_fails_e2e() -> None:
    summary = run_against(fake_api(polls_to_finish=10**9), _config(job_timeout_s=0.05))
    e2e = _by_name(summary)["e2e"]
    assert e2e["ok"] is False and e2e["detail"] == "job ended 'running'"


def test_without_a_second_key_ownership_is_skipped_not_passed() -> None:
    summary = run_against(fake_api(), _config(other_api_key=None))
    assert _by_name(summary)["ownership_404"]["ok"] is None
    assert (summary["ok"], summary["skipped"]) == (True, 1)


@pytest.mark.parametrize(
    "codes, ok",
    [
        ([202] * 5 + [429] * 3, True),
        ([202, 429] * 4, False),  # wrong split
        ([202] * 5 + [429, 429, 500], False),
        ([202] * 5 + [429] * 2, False),  # too few posts
    ],
)
def test_burst_verdict(codes: list[int], ok: bool) -> None:
    assert burst_verdict(codes, 8, 5)[0] is ok


def test_summary_needs_at_least_one_pass_and_no_failure() -> None:
    assert summarize("u", [])["ok"] is False
    assert summarize("u", [CheckResult("a", None, "skipped")])["ok"] is False
    assert summarize("u", [CheckResult("a", True, ""), CheckResult("b", False, "")])["ok"] is False
    assert summarize("u", [CheckResult("a", True, "")])["ok"] is True


def test_workflows_are_model_free_and_vary_by_seed() -> None:
    for build in (tiny_workflow, slow_workflow):
        graph = build(1)
        assert build(2) != graph
        types = {node["class_type"] for node in graph.values()}
        assert types <= {"EmptyImage", "ImageInvert", "ImageBlur", "SaveImage"}
        assert "SaveImage" in types


def _script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/smoke.py", *args],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
        timeout=120, check=False,
    )


def test_script_prints_the_summary_and_exits_by_it() -> None:
    # The key comes from the environment (through Settings), the URL from the arguments.
    with serve(fake_api()) as url:
        good = _script(["--url", url, "--other-api-key", "key-bob"],
                       {"COMFYUI_SAAS_API_KEY": "key-alice"})
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["passed"] == 6
    with serve(fake_api(cap=100)) as url:
        bad = _script(["--url", url, "--api-key", "key-alice"], {})
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["failed"] == 1


def test_script_refuses_to_run_without_a_key() -> None:
    done = _script(["--url", "http://127.0.0.1:9"], {})
    assert done.returncode == 2
    assert "an API key is needed" in done.stderr
