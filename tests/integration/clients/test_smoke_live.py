"""The smoke checks against a real local stack: the ingress under uvicorn, the pipeline's
worker processes over SQLite, the ComfyUI double, and an input image served on 127.0.0.2.

This is what keeps `app/clients/smoke.py` honest about the API: nothing here is faked.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from app.adapters.storage.local import LocalStore
from app.api.ingress import create_app
from app.clients.smoke import SmokeConfig, run_smoke
from app.core.config import Settings
from app.core.models import JobStatus
from app.deploy.local.runner import Pipeline
from app.engine.deps import Deps, build_deps
from tests.comfy_double import ComfyDouble
from tests.integration.ingress_harness import free_socket, serve_in_thread
from tests.paths import REPO_ROOT
from tests.support.http_servers import Site, serve

ROOT = REPO_ROOT
CHECKS = ["health", "auth_401", "e2e", "inputs", "ownership_404", "cancel", "burst_quota"]
INPUT_RGB = (200, 10, 30)


@dataclass
class Stack:
    url: str
    deps: Deps
    site: Site
    acme_key: str
    beta_key: str


def _png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole local deployment, started once for this module and stopped after it."""
    root = tmp_path_factory.mktemp("smoke_live")
    with ExitStack() as stop:
        double = ComfyDouble(root / "comfy")
        double.node_delay_s = {"ImageBlur": 0.5}  # slow jobs stay cancellable for seconds
        double.start()
        stop.callback(double.stop)
        site = stop.enter_context(serve("127.0.0.2"))
        site.files["/in.png"] = (_png(INPUT_RGB), "image/png")
        sock = free_socket()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings(
            data_dir=root / "data",
            comfyui_url=double.url,
            comfyui_base_dir=str(root / "comfy"),
            public_url=url,  # output links point back at this ingress's /files
            fetch_allow_http=True,
            fetch_allow_cidrs=["127.0.0.2/32"],
            fetch_allowed_ports=[site.port],
        )
        deps = build_deps(settings)
        acme = deps.tenants.create("acme")  # the default per-user cap of 5
        beta = deps.tenants.create("beta")
        pipeline = Pipeline(settings)
        pipeline.start()
        stop.callback(pipeline.shutdown, 10)
        stop.enter_context(serve_in_thread(create_app(deps), sock))
        yield Stack(url, deps, site, acme.api_key, beta.api_key)


def _config(stack: Stack, user: str) -> SmokeConfig:
    return SmokeConfig(
        api_key=stack.acme_key,
        user_id=user,
        other_api_key=stack.beta_key,
        input_url=stack.site.url("/in.png"),
        job_timeout_s=30.0,
        poll_interval_s=0.1,
    )


def test_every_smoke_check_passes_against_the_real_stack(stack: Stack) -> None:
    # When the smoke checks run against the live local deployment
    started = time.monotonic()
    summary = run_smoke(stack.url, _config(stack, "alice"), trust_env=False)
    # Then every check passed, none skipped, and the summary is JSON as printed
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary) == {"url", "ok", "passed", "failed", "skipped", "checks"}
    checks = {check["name"]: check for check in summary["checks"]}
    assert [check["name"] for check in summary["checks"]] == CHECKS
    failing = {name: c["detail"] for name, c in checks.items() if c["ok"] is not True}
    assert failing == {}, json.dumps(summary, indent=2)
    assert (summary["url"], summary["ok"]) == (stack.url, True)
    assert (summary["passed"], summary["failed"], summary["skipped"]) == (7, 0, 0)
    for check in summary["checks"]:
        assert set(check) == {"name", "ok", "detail", "duration_s", "data"}
        assert isinstance(check["duration_s"], float) and check["duration_s"] >= 0
    assert time.monotonic() - started < 45

    # And what the checks saw matches the server's own state
    jobs = stack.deps.jobs
    e2e = jobs.get(checks["e2e"]["data"]["job_id"])
    assert (e2e.status, e2e.user_id) == (JobStatus.COMPLETED, "alice")
    assert checks["e2e"]["data"]["output_bytes"] == [o.size for o in e2e.outputs]
    assert jobs.get(checks["cancel"]["data"]["job_id"]).status is JobStatus.CANCELLED
    assert checks["ownership_404"]["data"] == {
        "owner_get": 200,
        "other_user_get": 404,
        "other_user_delete": 404,
        "other_tenant_get": 404,
        "listed": False,
    }
    burst = checks["burst_quota"]["data"]
    assert burst["codes"] == [202] * 5 + [429] * 3
    retry_after = str(stack.deps.settings.cap_retry_after_s)
    assert burst["refusals"] == [{"code": "user_concurrency_limit", "retry_after": retry_after}] * 3
    assert burst["cancels"] == [200] * 5
    burst_jobs = jobs.list_for_user(e2e.tenant_id, burst["user_id"], limit=20).jobs
    assert sorted(job.status for job in burst_jobs) == [JobStatus.CANCELLED] * 5

    # And the inputs job really loaded the served image: its output is the inverse
    done = jobs.get(checks["inputs"]["data"]["job_id"])
    store = stack.deps.objects
    assert isinstance(store, LocalStore)
    with Image.open(store.path_for(done.outputs[0].key)) as image:
        pixel = image.convert("RGB").getpixel((8, 6))
    assert pixel == tuple(255 - c for c in INPUT_RGB)


def test_the_script_passes_against_the_real_stack(stack: Stack) -> None:
    # The documented command line, as an operator would run it (key from the environment)
    done = subprocess.run(
        [
            sys.executable,
            "scripts/smoke.py",
            "--url",
            stack.url,
            "--user",
            "bob",
            "--other-api-key",
            stack.beta_key,
            "--job-timeout-s",
            "30",
            "--poll-interval-s",
            "0.1",
        ],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "COMFYUI_SAAS_API_KEY": stack.acme_key},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    assert (summary["ok"], summary["passed"], summary["skipped"]) == (True, 6, 1)
    skipped = [c["name"] for c in summary["checks"] if c["ok"] is None]
    assert skipped == ["inputs"]  # no --input-url: the inputs feature is not relied on
