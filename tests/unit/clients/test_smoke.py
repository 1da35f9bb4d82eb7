"""The smoke checks against a small in-process API that follows the real contract (or
breaks one rule of it per flag), so every check is shown able to fail.

The real contract is exercised in tests/integration/test_smoke_live.py; this fake only
mirrors it (X-User-ID on every /v1/jobs call, DELETE to cancel, 429 with Retry-After,
`JobView` bodies, signed output links that need no key).
"""

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
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
import uvicorn
from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse

from app.clients.smoke import (
    CheckResult,
    SmokeConfig,
    burst_verdict,
    headers,
    input_workflow,
    run_smoke,
    slow_workflow,
    smoke_report,
    tiny_workflow,
)
from app.core.models import JobStatus, Stage
from app.core.schemas import JobView, OutputView, Timings
from tests.paths import REPO_ROOT
from tests.support.waiting import wait_until

ROOT = REPO_ROOT
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
KEYS = {"key-acme": "acme", "key-beta": "beta"}
CHECKS = ["health", "auth_401", "e2e", "inputs", "ownership_404", "cancel", "burst_quota"]
ACTIVE = {JobStatus.QUEUED, JobStatus.RUNNING}
# Module level: FastAPI resolves these (string) annotations in the module's namespace.
Auth = Annotated[str | None, Header()]
User = Annotated[str | None, Header(alias="X-User-ID")]


@dataclass
class Flags:
    """Each flag breaks one rule of the contract."""

    cap: int = 5
    leak_ownership: bool = False
    polls_to_finish: int = 2
    retry_after: bool = True
    cancel_works: bool = True
    output: bytes = PNG


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": code}}, status, headers=headers)


def fake_api(flags: Flags) -> FastAPI:
    """Just enough of the API for the smoke checks."""
    api = FastAPI()
    jobs: dict[str, dict[str, Any]] = {}
    ids = itertools.count(1)

    def caller(authorization: str | None, user: str | None) -> tuple[str, str] | JSONResponse:
        tenant = KEYS.get((authorization or "").removeprefix("Bearer "))
        if tenant is None:
            return _error(401, "unauthorized")
        if not user:
            return _error(422, "validation_error")
        return tenant, user

    def owned(job_id: str, who: tuple[str, str]) -> dict[str, Any] | None:
        job = jobs.get(job_id)
        if job is None or (job["owner"] != who and not flags.leak_ownership):
            return None
        return job

    def view(job: dict[str, Any]) -> dict[str, Any]:
        outputs = (
            [
                OutputView(
                    filename="a.png",
                    content_type="image/png",
                    size=len(flags.output),
                    url=f"/files/{job['id']}.png",
                )
            ]
            if job["status"] is JobStatus.COMPLETED
            else []
        )
        return JobView(
            id=job["id"],
            status=job["status"],
            stage=Stage.RENDER,
            progress=0.0,
            created_at=0.0,
            timings=Timings(),
            outputs=outputs,
        ).model_dump(mode="json")

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/v1/jobs")
    def create(body: dict[str, Any], authorization: Auth = None, user: User = None) -> Any:
        who = caller(authorization, user)
        if isinstance(who, JSONResponse):
            return who
        active = [j for j in jobs.values() if j["owner"] == who and j["status"] in ACTIVE]
        if len(active) >= flags.cap:
            return _error(
                429, "user_concurrency_limit", {"Retry-After": "5"} if flags.retry_after else {}
            )
        job_id = f"job_{next(ids)}"
        jobs[job_id] = {"id": job_id, "owner": who, "status": JobStatus.QUEUED, "polls": 0}
        return JSONResponse(view(jobs[job_id]), 202)

    @api.get("/v1/jobs")
    def listing(authorization: Auth = None, user: User = None) -> Any:
        who = caller(authorization, user)
        if isinstance(who, JSONResponse):
            return who
        mine = [view(j) for j in jobs.values() if owned(j["id"], who) is not None]
        return {"jobs": mine, "next_cursor": None}

    @api.get("/v1/jobs/{job_id}")
    def read(job_id: str, authorization: Auth = None, user: User = None) -> Any:
        who = caller(authorization, user)
        if isinstance(who, JSONResponse):
            return who
        job = owned(job_id, who)
        if job is None:
            return _error(404, "not_found")
        job["polls"] += 1
        if job["status"] in ACTIVE and job["polls"] >= flags.polls_to_finish:
            job["status"] = JobStatus.COMPLETED
        return view(job)

    @api.delete("/v1/jobs/{job_id}")
    def cancel(job_id: str, authorization: Auth = None, user: User = None) -> Any:
        who = caller(authorization, user)
        if isinstance(who, JSONResponse):
            return who
        job = owned(job_id, who)
        if job is None:
            return _error(404, "not_found")
        if job["status"] not in ACTIVE:
            return _error(409, "already_terminal")
        if flags.cancel_works:
            job["status"] = JobStatus.CANCELLED
        return view(job)

    @api.get("/files/{name}")
    def files(name: str, request: Request) -> Response:
        # Signed links carry their own credential; a client sending its key is a bug.
        if "authorization" in request.headers:
            return _error(400, "key_sent_to_files")
        return Response(flags.output, media_type="image/png")

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
    wait_until(lambda: server.started, timeout_s=10, interval_s=0.01, what="test API started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_against(flags: Flags, config: SmokeConfig) -> dict[str, Any]:
    with serve(fake_api(flags)) as url:
        return run_smoke(url, config, http_timeout_s=10, trust_env=False)


def _config(**overrides: Any) -> SmokeConfig:
    values: dict[str, Any] = {
        "api_key": "key-acme",
        "user_id": "alice",
        "other_api_key": "key-beta",
        "input_url": "https://x.test/a.png",
        "job_timeout_s": 5.0,
        "poll_interval_s": 0.0,
    }
    values.update(overrides)
    return SmokeConfig(**values)


def _by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in summary["checks"]}


def test_every_check_passes_against_a_conforming_api() -> None:
    summary = run_against(Flags(), _config())
    checks = _by_name(summary)
    assert list(checks) == CHECKS
    assert summary["ok"] is True, summary
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (7, 0, 0)
    assert checks["e2e"]["data"]["output_bytes"] == [len(PNG)]
    assert checks["burst_quota"]["data"]["codes"] == [202] * 5 + [429] * 3
    assert checks["cancel"]["data"]["second_delete"] == 409


def test_a_leaked_job_and_a_missing_cap_are_reported() -> None:
    summary = run_against(Flags(cap=100, leak_ownership=True), _config())
    checks = _by_name(summary)
    assert summary["ok"] is False
    ownership = checks["ownership_404"]
    assert ownership["ok"] is False
    assert ownership["data"]["other_user_get"] == 200
    assert ownership["data"]["other_tenant_get"] == 200
    assert ownership["data"]["listed"] is True
    assert checks["burst_quota"]["ok"] is False
    assert checks["burst_quota"]["detail"] == "8 x 202 (want 5 x 202, then 3 x 429)"


def test_a_429_without_retry_after_fails_the_burst() -> None:
    summary = run_against(Flags(retry_after=False), _config())
    burst = _by_name(summary)["burst_quota"]
    assert burst["ok"] is False
    assert "3 429(s) without user_concurrency_limit and Retry-After" in burst["detail"]


def test_a_cancel_that_does_not_cancel_fails() -> None:
    summary = run_against(Flags(cancel_works=False), _config())
    cancel = _by_name(summary)["cancel"]
    assert cancel["ok"] is False
    assert cancel["detail"] == "cancel answered HTTP 200, status 'queued'"


def test_an_output_that_is_not_a_png_fails_e2e() -> None:
    summary = run_against(Flags(output=b"GIF89a" + b"\x00" * 8), _config())
    checks = _by_name(summary)
    assert checks["e2e"]["ok"] is False and checks["inputs"]["ok"] is False
    assert checks["e2e"]["detail"].startswith("output download answered HTTP 200")


def test_a_job_that_never_finishes_fails_e2e() -> None:
    summary = run_against(Flags(polls_to_finish=10**9), _config(job_timeout_s=0.05))
    e2e = _by_name(summary)["e2e"]
    assert e2e["ok"] is False and e2e["detail"] == "job ended 'queued'"


def test_without_optional_arguments_inputs_are_skipped_and_ownership_still_runs() -> None:
    summary = run_against(Flags(), _config(other_api_key=None, input_url=None))
    checks = _by_name(summary)
    assert checks["inputs"]["ok"] is None
    assert checks["ownership_404"]["ok"] is True
    assert "other_tenant_get" not in checks["ownership_404"]["data"]
    assert (summary["ok"], summary["passed"], summary["skipped"]) == (True, 6, 1)


def test_every_jobs_call_names_the_user_and_only_keyed_ones_authenticate() -> None:
    assert headers(None, "alice") == {"X-User-ID": "alice"}
    assert headers("k", "alice") == {"X-User-ID": "alice", "Authorization": "Bearer k"}


@pytest.mark.parametrize(
    "codes, ok",
    [
        ([202] * 5 + [429] * 3, True),
        ([429] + [202] * 5 + [429] * 2, False),  # a fresh user's first posts are admitted
        ([202] * 4 + [429] * 4, False),
        ([202] * 5 + [429, 429, 500], False),
        ([202] * 5 + [429] * 2, False),  # too few posts
    ],
)
def test_burst_verdict(codes: list[int], ok: bool) -> None:
    assert burst_verdict(codes, 8, 5)[0] is ok


def test_summary_needs_at_least_one_pass_and_no_failure() -> None:
    assert smoke_report("u", [])["ok"] is False
    assert smoke_report("u", [CheckResult("a", None, "skipped")])["ok"] is False
    assert (
        smoke_report("u", [CheckResult("a", True, ""), CheckResult("b", False, "")])["ok"] is False
    )
    assert smoke_report("u", [CheckResult("a", True, "")])["ok"] is True


def test_workflows_are_model_free_and_vary_by_seed() -> None:
    for build in (tiny_workflow, slow_workflow, input_workflow):
        graph = build(1)
        assert build(2) != graph
        types = {node["class_type"] for node in graph.values()}
        assert types <= {"LoadImage", "EmptyImage", "ImageInvert", "ImageBlur", "SaveImage"}
        assert "SaveImage" in types
    assert "LoadImage" not in json.dumps([tiny_workflow(1), slow_workflow(1)])


def test_workflow_values_stay_within_comfyui_ranges() -> None:
    for seed in (0, 98, 99, 2**64 + 5, time.time_ns()):
        assert 0 <= tiny_workflow(seed)["1"]["inputs"]["color"] <= 0xFFFFFF
        assert 0.1 <= input_workflow(seed)["2"]["inputs"]["sigma"] <= 10.0


def _script(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/smoke.py", "--poll-interval-s", "0", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_script_prints_the_summary_and_exits_by_it() -> None:
    # The key comes from the environment (through Settings), the URL from the arguments.
    with serve(fake_api(Flags())) as url:
        good = _script(
            ["--url", url, "--user", "carol", "--other-api-key", "key-beta"],
            {"COMFYUI_SAAS_API_KEY": "key-acme"},
        )
    assert good.returncode == 0, good.stderr
    assert (json.loads(good.stdout)["passed"], json.loads(good.stdout)["skipped"]) == (6, 1)
    with serve(fake_api(Flags(cap=100))) as url:
        bad = _script(["--url", url, "--api-key", "key-acme"], {})
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["failed"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--url", "http://127.0.0.1:9"], "an API key is needed"),
        (["--url", "http://127.0.0.1:9", "--api-key", "k", "--user", "a b"], "--user must be"),
    ],
)
def test_script_refuses_bad_arguments(args: list[str], message: str) -> None:
    done = _script(args, {})
    assert done.returncode == 2
    assert message in done.stderr
