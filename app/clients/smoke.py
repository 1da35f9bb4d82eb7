"""End-to-end checks against a deployed API; `scripts/smoke.py` runs them and prints JSON.

Checks, in order (each one's result is in the summary, with what it saw):

1. health         GET /health -> 200 `{"status": "ok"}`
2. auth_401       POST /v1/jobs without a key, and with a made-up key -> 401 both
3. e2e            POST a model-free workflow -> 202 job view, poll to `completed`, download
                  every output URL without the API key (signed links) -> PNG bytes
4. inputs         the same with an input image fetched from `input_url` (skipped without)
5. ownership_404  the e2e job read by another X-User-ID with the same key -> 404 (GET and
                  DELETE, and absent from that user's list); with another tenant's key -> 404
6. cancel         POST a slow workflow, DELETE it -> 200 `cancelled`, stays `cancelled`;
                  a second DELETE -> 409
7. burst_quota    8 quick POSTs for a fresh user -> exactly 5 x 202 and 3 x 429
                  (`user_concurrency_limit`, with Retry-After); the admitted ones are
                  cancelled afterwards

Every `/v1/jobs` call carries `Authorization: Bearer <key>` and `X-User-ID`. Workflows
use only core nodes (no model files) and vary a value per run, so ComfyUI's cache never
turns a render into a no-op.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from pydantic import ValidationError

from app.core.polling import poll_until
from app.core.schemas import JobView

HEALTH_PATH = "/health"
JOBS_PATH = "/v1/jobs"
USER_HEADER = "X-User-ID"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Shaped like a real key (`csk_<id>_<secret>`) so only the lookup can refuse it.
BAD_KEY = "csk_smoke000_" + "x" * 32
INPUT_NAME = "smoke-input.png"
CAP_CODE = "user_concurrency_limit"


@dataclass(frozen=True, slots=True)
class SmokeConfig:
    """What to check, as whom, and how long to wait."""

    api_key: str
    user_id: str = "smoke"
    other_api_key: str | None = None
    input_url: str | None = None
    job_timeout_s: float = 600.0
    poll_interval_s: float = 2.0
    burst_posts: int = 8
    burst_accepted: int = 5

    @property
    def other_user_id(self) -> str:
        """A user of the same tenant who must not see `user_id`'s jobs."""
        return f"{self.user_id[:100]}-other"


@dataclass(slots=True)
class CheckResult:
    """One check's verdict; `ok` None means skipped."""

    name: str
    ok: bool | None
    detail: str
    duration_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


# ---- workflows (model-free core nodes, present in every ComfyUI) ------------------------


def _color(seed: int) -> int:
    return seed % 0x1000000


def tiny_workflow(seed: int) -> dict[str, Any]:
    """EmptyImage -> ImageInvert -> SaveImage; `seed` picks the colour so nothing is cached."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": _color(seed)},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "smoke"},
        },
    }


def input_workflow(seed: int, image_name: str = INPUT_NAME) -> dict[str, Any]:
    """LoadImage -> ImageBlur -> ImageInvert -> SaveImage; `seed` picks the blur's sigma."""
    sigma = round(0.1 + (seed % 99) / 10, 1)  # within ComfyUI's 0.1..10.0
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": sigma},
        },
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": "smoke_input"},
        },
    }


def slow_workflow(seed: int) -> dict[str, Any]:
    """A 2048x2048 image blurred four times: long enough to cancel or to hold a slot."""
    graph: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 2048, "height": 2048, "batch_size": 1, "color": _color(seed)},
        },
    }
    previous = "1"
    for index in range(2, 6):
        graph[str(index)] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 31, "sigma": 10.0},
        }
        previous = str(index)
    graph["6"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [previous, 0], "filename_prefix": "smoke_slow"},
    }
    return graph


# ---- requests --------------------------------------------------------------------------


def headers(key: str | None, user_id: str) -> dict[str, str]:
    """The headers of a `/v1/jobs` call; no Authorization when `key` is None."""
    found = {USER_HEADER: user_id}
    if key is not None:
        found["Authorization"] = f"Bearer {key}"
    return found


def job_path(job_id: str) -> str:
    """The route of one job."""
    return f"{JOBS_PATH}/{job_id}"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def parse_view(response: httpx.Response) -> tuple[JobView | None, str]:
    """The response body as a `JobView`, or None and why not."""
    try:
        return JobView.model_validate_json(response.content), ""
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return None, f"not a job view ({where}: {first['msg']})"


def response_error_code(response: httpx.Response) -> str | None:
    """`error.code` of an error response, if it has the common shape."""
    body = _json(response)
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else None


def send_job(
    client: httpx.Client, key: str | None, user_id: str, body: dict[str, Any]
) -> httpx.Response:
    """POST one job request."""
    return client.post(JOBS_PATH, json=body, headers=headers(key, user_id))


def send_cancel(client: httpx.Client, key: str, user_id: str, job_id: str) -> httpx.Response:
    """DELETE a job: 200 with it cancelled, 409 if it had already ended."""
    return client.delete(job_path(job_id), headers=headers(key, user_id))


def wait_terminal(
    client: httpx.Client,
    cfg: SmokeConfig,
    job_id: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll a job until it ends or the timeout passes; the last body seen."""

    def fetch() -> dict[str, Any]:
        response = client.get(job_path(job_id), headers=headers(cfg.api_key, cfg.user_id))
        found = _json(response)
        body = found if isinstance(found, dict) else {}
        if response.status_code != 200:
            body = {"http_status": response.status_code, "error": body.get("error")}
        return body

    return poll_until(
        fetch,
        lambda body: body.get("status") in TERMINAL,
        timeout_s=cfg.job_timeout_s,
        poll_s=cfg.poll_interval_s,
        on_timeout=lambda last: last or {},
        clock=clock,
        sleep=sleep,
    )


# ---- verdicts (pure) -------------------------------------------------------------------


def burst_verdict(codes: Sequence[int], posts: int, accepted: int) -> tuple[bool, str]:
    """The first `accepted` posts 202, the rest 429: a fresh user's cap, filled in order."""
    want = [202] * accepted + [429] * (posts - accepted)
    ok = list(codes) == want
    counts = Counter(codes)
    detail = ", ".join(f"{n} x {code}" for code, n in sorted(counts.items()))
    if not ok and counts == Counter(want):
        detail += " out of order"
    return ok, f"{detail} (want {accepted} x 202, then {posts - accepted} x 429)"


def smoke_report(url: str, results: Sequence[CheckResult]) -> dict[str, Any]:
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
    except (httpx.HTTPError, ValidationError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        result = CheckResult(name, False, f"{type(exc).__name__}: {first_line}")
    result.duration_s = round(time.monotonic() - start, 3)
    return result


# ---- the checks ------------------------------------------------------------------------


def check_health(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """The health route answers 200 with status ok."""
    response = client.get(HEALTH_PATH)
    body = _json(response)
    status = body.get("status") if isinstance(body, dict) else None
    ok = response.status_code == 200 and status == "ok"
    return CheckResult("health", ok, f"HTTP {response.status_code}, status {status!r}")


def check_auth(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """A submission without a key, and one with an unknown key, are refused with 401."""
    body = {"workflow": tiny_workflow(1)}
    codes = {
        "no_key": send_job(client, None, cfg.user_id, body).status_code,
        "bad_key": send_job(client, BAD_KEY, cfg.user_id, body).status_code,
    }
    ok = all(code == 401 for code in codes.values())
    detail = ", ".join(f"{name}: HTTP {code}" for name, code in codes.items())
    return CheckResult("auth_401", ok, detail, data=codes)


def _run_job(
    client: httpx.Client, cfg: SmokeConfig, name: str, request: dict[str, Any]
) -> CheckResult:
    """Submit, wait for completion, download every output without the API key."""
    response = send_job(client, cfg.api_key, cfg.user_id, request)
    view, problem = parse_view(response)
    if response.status_code != 202 or view is None:
        return CheckResult(
            name,
            False,
            f"submit answered HTTP {response.status_code} {problem}",
            data={"error": response_error_code(response)},
        )
    data: dict[str, Any] = {"job_id": view.id}
    body = wait_terminal(client, cfg, view.id)
    if body.get("status") != "completed":
        data["error"] = body.get("error")
        return CheckResult(name, False, f"job ended {body.get('status')!r}", data=data)
    done = JobView.model_validate(body)
    sizes: list[int] = []
    data["output_bytes"] = sizes
    for output in done.outputs:
        # No Authorization header: the URL itself is the credential.
        got = client.get(output.url)
        if got.status_code != 200 or not got.content.startswith(PNG_MAGIC):
            return CheckResult(
                name,
                False,
                f"output download answered HTTP {got.status_code} ({got.content[:8]!r})",
                data=data,
            )
        if len(got.content) != output.size:
            return CheckResult(
                name,
                False,
                f"output is {len(got.content)} bytes, the job view says {output.size}",
                data=data,
            )
        sizes.append(len(got.content))
    data["total_s"] = done.timings.total_s
    ok = bool(sizes)
    detail = f"{len(sizes)} PNG output(s) downloaded" if ok else "completed without outputs"
    return CheckResult(name, ok, detail, data=data)


def check_e2e(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """A model-free job completes and its outputs download as PNGs."""
    return _run_job(client, cfg, "e2e", {"workflow": tiny_workflow(time.time_ns())})


def check_input_fetch(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """A job loading an input image from `input_url` completes (skipped without one)."""
    if cfg.input_url is None:
        return CheckResult("inputs", None, "skipped: needs --input-url")
    request = {
        "workflow": input_workflow(time.time_ns()),
        "inputs": [{"name": INPUT_NAME, "url": cfg.input_url}],
    }
    return _run_job(client, cfg, "inputs", request)


def check_ownership(client: httpx.Client, cfg: SmokeConfig, job_id: str | None) -> CheckResult:
    """Nobody but the owner sees the job: 404, not 403, so ids cannot be probed."""
    if job_id is None:
        return CheckResult("ownership_404", None, "skipped: the e2e check made no job")
    other = cfg.other_user_id
    codes = {
        "owner_get": client.get(
            job_path(job_id), headers=headers(cfg.api_key, cfg.user_id)
        ).status_code,
        "other_user_get": client.get(
            job_path(job_id), headers=headers(cfg.api_key, other)
        ).status_code,
        "other_user_delete": send_cancel(client, cfg.api_key, other, job_id).status_code,
    }
    listed = client.get(JOBS_PATH, params={"limit": 100}, headers=headers(cfg.api_key, other))
    body = _json(listed)
    jobs = body.get("jobs") if isinstance(body, dict) else None
    is_list = listed.status_code == 200 and isinstance(jobs, list)
    leaked_in_list = isinstance(jobs, list) and any(
        isinstance(job, dict) and job.get("id") == job_id for job in jobs
    )
    if cfg.other_api_key is not None:
        codes["other_tenant_get"] = client.get(
            job_path(job_id), headers=headers(cfg.other_api_key, cfg.user_id)
        ).status_code
    want = {name: 200 if name == "owner_get" else 404 for name in codes}
    ok = codes == want and is_list and not leaked_in_list
    detail = ", ".join(f"{name}: HTTP {code}" for name, code in codes.items())
    detail += f", other user's list: HTTP {listed.status_code}"
    detail += " (shows the job)" if leaked_in_list else "" if is_list else " (not a job list)"
    if cfg.other_api_key is None:
        detail += "; no --other-api-key, other tenant not tried"
    return CheckResult("ownership_404", ok, detail, data={**codes, "listed": leaked_in_list})


def check_cancel(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """A slow job cancelled right after submission is `cancelled`, and stays so."""
    response = send_job(
        client, cfg.api_key, cfg.user_id, {"workflow": slow_workflow(time.time_ns())}
    )
    view, problem = parse_view(response)
    if response.status_code != 202 or view is None:
        return CheckResult(
            "cancel",
            False,
            f"submit answered HTTP {response.status_code} {problem}",
            data={"error": response_error_code(response)},
        )
    data: dict[str, Any] = {"job_id": view.id}
    answer = send_cancel(client, cfg.api_key, cfg.user_id, view.id)
    cancelled, _ = parse_view(answer)
    data["delete"] = answer.status_code
    if answer.status_code != 200 or cancelled is None or cancelled.status != "cancelled":
        status = cancelled.status.value if cancelled else None
        return CheckResult(
            "cancel",
            False,
            f"cancel answered HTTP {answer.status_code}, status {status!r}",
            data=data,
        )
    data["final"] = final = wait_terminal(client, cfg, view.id).get("status")
    data["second_delete"] = again = send_cancel(
        client, cfg.api_key, cfg.user_id, view.id
    ).status_code
    ok = final == "cancelled" and again == 409
    return CheckResult(
        "cancel", ok, f"job ended {final!r}, a second cancel answered HTTP {again}", data=data
    )


def check_burst(client: httpx.Client, cfg: SmokeConfig) -> CheckResult:
    """N quick submissions by a fresh user hit the per-user cap exactly."""
    user = f"{cfg.user_id[:80]}-burst-{time.time_ns():x}"
    codes: list[int] = []
    refusals: list[dict[str, Any]] = []
    admitted: list[str] = []
    for index in range(cfg.burst_posts):
        request = {"workflow": slow_workflow(time.time_ns() + index)}
        response = send_job(client, cfg.api_key, user, request)
        codes.append(response.status_code)
        if response.status_code == 202:
            view, _ = parse_view(response)
            if view is not None:
                admitted.append(view.id)
        elif response.status_code == 429:
            refusals.append(
                {
                    "code": response_error_code(response),
                    "retry_after": response.headers.get("Retry-After"),
                }
            )
    # The admitted jobs are cleanup: 409 only means one already ended on its own.
    cancels = [send_cancel(client, cfg.api_key, user, job_id).status_code for job_id in admitted]
    ok, detail = burst_verdict(codes, cfg.burst_posts, cfg.burst_accepted)
    bad_refusals = [
        r for r in refusals if r["code"] != CAP_CODE or not str(r["retry_after"] or "").isdigit()
    ]
    if bad_refusals:
        ok = False
        detail += f"; {len(bad_refusals)} 429(s) without {CAP_CODE} and Retry-After"
    if any(code not in (200, 409) for code in cancels):
        ok = False
        detail += f"; cancelling the admitted jobs answered {cancels}"
    data = {"user_id": user, "codes": codes, "refusals": refusals, "cancels": cancels}
    return CheckResult("burst_quota", ok, detail, data=data)


def run_all(client: httpx.Client, cfg: SmokeConfig, url: str) -> dict[str, Any]:
    """Every check in order, then the summary."""
    results = [
        _timed("health", lambda: check_health(client, cfg)),
        _timed("auth_401", lambda: check_auth(client, cfg)),
    ]
    e2e = _timed("e2e", lambda: check_e2e(client, cfg))
    results.append(e2e)
    results.append(_timed("inputs", lambda: check_input_fetch(client, cfg)))
    job_id = e2e.data.get("job_id")
    results.append(_timed("ownership_404", lambda: check_ownership(client, cfg, job_id)))
    results.append(_timed("cancel", lambda: check_cancel(client, cfg)))
    results.append(_timed("burst_quota", lambda: check_burst(client, cfg)))
    return smoke_report(url, results)


def run_smoke(
    url: str,
    cfg: SmokeConfig,
    *,
    http_timeout_s: float = 30.0,
    trust_env: bool = True,
    proxy_headers: Mapping[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Run every check against the API at `url`; the JSON summary.

    `proxy_headers` (Modal-Key/Modal-Secret, `app.clients.proxy_auth`) go on every call,
    the unauthenticated ones included: Modal's edge checks them before the API does.
    """
    with httpx.Client(
        base_url=url,
        timeout=http_timeout_s,
        follow_redirects=False,
        trust_env=trust_env,
        headers=dict(proxy_headers or {}),
        transport=transport,
    ) as client:
        return run_all(client, cfg, url)
