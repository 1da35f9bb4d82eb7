"""End-to-end checks against a deployed API; `scripts/smoke.py` runs them and prints JSON.

Checks, in order (each one's result is in the summary, with what it saw):

1. health         GET the health route -> 200
2. auth_401       POST a job without a key -> 401
3. e2e            POST a model-free workflow -> 202, poll to `completed`, download outputs
4. ownership_404  GET that job with another user's key -> 404 (skipped without one)
5. cancel         POST a slow workflow, cancel it -> it ends `cancelled`
6. burst_quota    8 quick POSTs -> exactly 5 x 202 and 3 x 429 (the default per-user cap);
                  the accepted jobs are cancelled afterwards

The checks take an `httpx.Client`, so tests run them against an in-process app.
Routes and field names live in `ApiContract`; align it with the ingress if it changes.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

TERMINAL = frozenset({"completed", "failed", "cancelled"})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class ApiContract:
    """Where the API's routes are and how a client authenticates."""

    health_path: str = "/health"
    jobs_path: str = "/v1/jobs"
    job_path: str = "/v1/jobs/{job_id}"
    cancel_path: str = "/v1/jobs/{job_id}/cancel"
    auth_header: str = "Authorization"
    auth_prefix: str = "Bearer "


@dataclass(frozen=True, slots=True)
class SmokeConfig:
    """What to check and how long to wait."""

    api_key: str
    other_api_key: str | None = None
    job_timeout_s: float = 600.0
    poll_interval_s: float = 2.0
    burst_posts: int = 8
    burst_accepted: int = 5
    contract: ApiContract = field(default_factory=ApiContract)


@dataclass(slots=True)
class CheckResult:
    """One check's verdict; `ok` None means skipped."""

    name: str
    ok: bool | None
    detail: str
    duration_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


# ---- workflows (model-free nodes, present in every ComfyUI) -----------------------------


def tiny_workflow(seed: int) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> SaveImage; `seed` varies the colour so nothing is cached."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": seed % 0xFFFFFF}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage",
              "inputs": {"images": ["2", 0], "filename_prefix": "smoke"}},
    }


def slow_workflow(seed: int) -> dict[str, Any]:
    """A 2048x2048 image blurred four times: long enough to cancel or to hold a slot."""
    graph: dict[str, Any] = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 2048, "height": 2048, "batch_size": 1,
                         "color": seed % 0xFFFFFF}},
    }
    previous = "1"
    for index in range(2, 6):
        graph[str(index)] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 31, "sigma": 10.0},
        }
        previous = str(index)
    graph["6"] = {"class_type": "SaveImage",
                  "inputs": {"images": [previous, 0], "filename_prefix": "smoke_slow"}}
    return graph


# ---- small helpers -------------------------------------------------------------------


def _headers(contract: ApiContract, key: str | None) -> dict[str, str]:
    return {} if key is None else {contract.auth_header: f"{contract.auth_prefix}{key}"}


def job_id_of(body: Any) -> str | None:
    """The job id in a create/status response."""
    if not isinstance(body, dict):
        return None
    value = body.get("id") or body.get("job_id")
    return str(value) if value else None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def submit(client: httpx.Client, cfg: SmokeConfig, workflow: dict[str, Any],
           key: str | None) -> httpx.Response:
    """POST one job."""
    return client.post(cfg.contract.jobs_path, json={"workflow": workflow},
                       headers=_headers(cfg.contract, key))


def wait_terminal(client: httpx.Client, cfg: SmokeConfig, job_id: str,
                  sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll a job until it ends or the timeout passes; the last body seen."""
    deadline = time.monotonic() + cfg.job_timeout_s
    body: dict[str, Any] = {}
    while True:
        response = client.get(cfg.contract.job_path.format(job_id=job_id),
                              headers=_headers(cfg.contract, cfg.api_key))
        found = _json(response)
        body = found if isinstance(found, dict) else {"http_status": response.status_code}
        if body.get("status") in TERMINAL or time.monotonic() >= deadline:
            return body
        sleep(cfg.poll_interval_s)


def cancel(client: httpx.Client, cfg: SmokeConfig, job_id: str) -> httpx.Response:
    """Ask the API to cancel a job."""
    return client.post(cfg.contract.cancel_path.format(job_id=job_id),
                       headers=_headers(cfg.contract, cfg.api_key))


def burst_verdict(codes: Sequence[int], posts: int, accepted: int) -> tuple[bool, str]:
    """Exactly `accepted` 202s and the rest 429s, nothing else."""
    counts = Counter(codes)
    ok = (len(codes) == posts and counts[202] == accepted
          and counts[429] == posts - accepted and len(counts) <= 2)
    detail = ", ".join(f"{n} x {code}" for code, n in sorted(counts.items()))
    return ok, f"{detail} (want {accepted} x 202, {posts - accepted} x 429)"


def summarize(url: str, results: Sequence[CheckResult]) -> dict[str, Any]:
    """The JSON summary: overall ok only if no check failed and something passed."""
    passed = sum(1 for r in results if r.ok is True)
    failed = sum(1 for r in results if r.ok is False)
    skipped = sum(1 for r in results if r.ok is None)
    return {
        "url": url,
        "ok": failed == 0 and passed > 0,
        "passed": passed,
        "failed": failed,
        "skipped": skipped,
        "checks": [asdict(r) for r in results],
    }


def _timed(name: str, body: Callable[[], CheckResult]) -> CheckResult:
    start = time.monotonic()
    try:
        result = body()
    except httpx.HTTPError as exc:
        result = CheckResult(name, False, f"{type(exc).__name__}: {exc}")
    result.duration_s = round(time.monotonic() - start, 3)
    return result


# ---- the checks ------------------------------------------------------------------------


def check_health(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """The health route answers 200."""
    response = client.get(cfg.contract.health_path)
    return CheckResult("health", response.status_code == 200, f"HTTP {response.status_code}")


def check_auth(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """A request without a key is refused with 401."""
    response = submit(client, cfg, tiny_workflow(1), key=None)
    return CheckResult("auth_401", response.status_code == 401, f"HTTP {response.status_code}")


def check_e2e(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """Submit, wait for completion, download every output."""
    response = submit(client, cfg, tiny_workflow(time.time_ns()), cfg.api_key)
    job_id = job_id_of(_json(response))
    if response.status_code != 202 or job_id is None:
        return CheckResult("e2e", False, f"submit answered HTTP {response.status_code}")
    body = wait_terminal(client, cfg, job_id)
    if body.get("status") != "completed":
        return CheckResult("e2e", False, f"job ended {body.get('status')!r}",
                           data={"job_id": job_id, "error": body.get("error")})
    outputs = body.get("outputs") or []
    sizes: list[int] = []
    for output in outputs:
        got = client.get(str(output.get("url", "")))
        if got.status_code != 200 or not got.content.startswith(PNG_MAGIC):
            return CheckResult("e2e", False, f"output download answered HTTP {got.status_code}",
                               data={"job_id": job_id})
        sizes.append(len(got.content))
    ok = bool(sizes)
    detail = f"{len(sizes)} output(s) downloaded" if ok else "completed without outputs"
    return CheckResult("e2e", ok, detail, data={"job_id": job_id, "output_bytes": sizes})


def check_ownership(client: httpx.Client, cfg: SmokeConfig, job_id: str | None) -> CheckResult:
    """Another user's key sees 404 for our job (not 403: existence is not revealed)."""
    if cfg.other_api_key is None or job_id is None:
        return CheckResult("ownership_404", None, "skipped: needs --other-api-key and a job")
    response = client.get(cfg.contract.job_path.format(job_id=job_id),
                          headers=_headers(cfg.contract, cfg.other_api_key))
    return CheckResult("ownership_404", response.status_code == 404,
                       f"HTTP {response.status_code}")


def check_cancel(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """A slow job cancelled right after submission ends `cancelled`."""
    response = submit(client, cfg, slow_workflow(time.time_ns()), cfg.api_key)
    job_id = job_id_of(_json(response))
    if response.status_code != 202 or job_id is None:
        return CheckResult("cancel", False, f"submit answered HTTP {response.status_code}")
    answer = cancel(client, cfg, job_id)
    if answer.status_code not in (200, 202):
        return CheckResult("cancel", False, f"cancel answered HTTP {answer.status_code}",
                           data={"job_id": job_id})
    body = wait_terminal(client, cfg, job_id)
    status = body.get("status")
    return CheckResult("cancel", status == "cancelled", f"job ended {status!r}",
                       data={"job_id": job_id})


def check_burst(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """N quick submissions hit the per-user cap exactly; the admitted ones are cancelled."""
    codes: list[int] = []
    admitted: list[str] = []
    for index in range(cfg.burst_posts):
        response = submit(client, cfg, slow_workflow(time.time_ns() + index), cfg.api_key)
        codes.append(response.status_code)
        job_id = job_id_of(_json(response))
        if response.status_code == 202 and job_id is not None:
            admitted.append(job_id)
    for job_id in admitted:
        cancel(client, cfg, job_id)
    ok, detail = burst_verdict(codes, cfg.burst_posts, cfg.burst_accepted)
    return CheckResult("burst_quota", ok, detail, data={"codes": codes})


def run_all(client: httpx.Client, cfg: SmokeConfig, url: str) -> dict[str, Any]:
    """Every check in order, then the summary."""
    results = [
        _timed("health", lambda: check_health(client, cfg)),
        _timed("auth_401", lambda: check_auth(client, cfg)),
    ]
    e2e = _timed("e2e", lambda: check_e2e(client, cfg))
    results.append(e2e)
    job_id = e2e.data.get("job_id")
    results.append(_timed("ownership_404", lambda: check_ownership(client, cfg, job_id)))
    results.append(_timed("cancel", lambda: check_cancel(client, cfg)))
    results.append(_timed("burst_quota", lambda: check_burst(client, cfg)))
    return summarize(url, results)
