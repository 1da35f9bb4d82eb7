"""`/api/v2/jobs`: Comfy's v2 job API as a second face over the same jobs as `/v1/jobs`.

Same key (`Authorization: Bearer`), same tenancy (a job belongs to a tenant and user;
another's job is a 404 like a missing one), same admission as `POST /v1/jobs` (backlog
check, caps, rate limit, idempotency); only names, statuses and codes are the spec's.
The mapping, and what is not supported, is in docs/api-v2.md.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse

from app.api.events import open_stream
from app.api.http_errors import error_doc
from app.api.ingress import DepsDep, TenantDep, raw_body
from app.api.submissions import submit
from app.api.v2.errors import bad_request, v2_errors
from app.api.v2.events import v2_frame
from app.api.v2.mapping import PREFIX, STATUS_FROM_V2, to_v2
from app.api.v2.requests import idempotency_key_of, job_request_of, user_of
from app.api.v2.schemas import V2Job, V2JobList
from app.core.errors import AlreadyTerminal, ApiError, JobNotFound
from app.core.ids import is_ascii_number
from app.core.models import Job
from app.engine.backpressure import check_backlog
from app.engine.pipeline import cancel_job
from app.engine.views import owned_job
from app.store.tenants import Tenant

MAX_PAGE = 100
DEFAULT_PAGE = 20

v2_router = APIRouter(prefix=PREFIX, tags=["v2"])

UserHeader = Annotated[
    str | None,
    Header(
        alias="X-User-ID",
        description="The end user the job belongs to; without it, the tenant's `default` user.",
    ),
]
KeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Stripe semantics: same key and body replay the job "
        "(`Idempotency-Replayed: true`); another body is 422 `idempotency_key_reuse`.",
    ),
]


_COMMON: dict[int | str, dict[str, Any]] = {
    400: error_doc("`invalid_request`: a malformed body, parameter or header."),
    401: error_doc("`unauthorized`: missing, invalid or revoked API key."),
    503: error_doc("The state backend is briefly unavailable; retry after `Retry-After`."),
}
_ONE_JOB: dict[int | str, dict[str, Any]] = {**_COMMON, 404: error_doc("`not_found`.")}


def _job_or_404(deps: DepsDep, tenant: Tenant, user: str, job_id: str) -> Job:
    job = owned_job(deps, tenant.id, user, job_id)
    if job is None:
        raise ApiError(404, "not_found", "no such job")
    return job


@v2_router.post(
    "",
    status_code=201,
    responses={
        **_COMMON,
        403: error_doc("`templates_only`: this tenant runs registered templates only."),
        409: error_doc("`idempotency_conflict`: the key's first use is in flight (Retry-After)."),
        413: error_doc("The body is over the request size limit."),
        422: error_doc(
            "`invalid_workflow` (details: `node_errors`), `workflow_format_ui`, "
            "`missing_asset`, `unsupported_field` or `idempotency_key_reuse`."
        ),
        429: error_doc("A cap, the rate limit, or `queue_full`; see `Retry-After`."),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/V2JobCreate"},
                }
            },
        }
    },
)
def create_v2_job(
    response: Response,
    deps: DepsDep,
    tenant: TenantDep,
    body: Annotated[bytes, Depends(raw_body)],
    x_user_id: UserHeader = None,
    idempotency_key: KeyHeader = None,
) -> V2Job:
    """Submit an API-format workflow: 201 with the job (also when a key replays it)."""
    with v2_errors(deps):
        user = user_of(x_user_id)
        key = idempotency_key_of(idempotency_key)
        request = job_request_of(body)  # a malformed body costs no backlog read
        check_backlog(deps)
        admission = submit(deps, tenant, user, request, key)
    if admission.replayed:
        response.headers["Idempotency-Replayed"] = "true"
    response.headers["Location"] = f"{PREFIX}/{admission.job.id}"
    return to_v2(deps, admission.job)


@v2_router.get("", responses=_COMMON)
def list_v2_jobs(
    deps: DepsDep,
    tenant: TenantDep,
    x_user_id: UserHeader = None,
    limit: str | None = None,
    cursor: str | None = None,
    status: str | None = None,
) -> V2JobList:
    """The caller's jobs, newest first; `limit` 1-100 (20), `cursor` from `next_cursor`."""
    user = user_of(x_user_id)
    size = _page_size(limit)
    if cursor is not None and not (is_ascii_number(cursor) and len(cursor) <= 12):
        raise bad_request("cursor must be the next_cursor of a previous page", param="cursor")
    if status is not None and status not in STATUS_FROM_V2:
        raise bad_request("status must be one of " + ", ".join(STATUS_FROM_V2), param="status")
    ours = None if status is None else STATUS_FROM_V2[status]
    if status is not None and ours is None:
        return V2JobList(jobs=[])  # a status this server never gives a job
    page = deps.jobs.list_for_user(tenant.id, user, limit=size, cursor=cursor, status=ours)
    return V2JobList(jobs=[to_v2(deps, job) for job in page.jobs], next_cursor=page.next_cursor)


def _page_size(limit: str | None) -> int:
    if limit is None:
        return DEFAULT_PAGE
    if not is_ascii_number(limit) or not 1 <= int(limit) <= MAX_PAGE:
        raise bad_request(f"limit must be a whole number from 1 to {MAX_PAGE}", param="limit")
    return int(limit)


@v2_router.get("/{job_id}", responses=_ONE_JOB)
def get_v2_job(
    deps: DepsDep, tenant: TenantDep, job_id: str, x_user_id: UserHeader = None
) -> V2Job:
    """The job: status, latest progress, outputs with freshly signed URLs."""
    return to_v2(deps, _job_or_404(deps, tenant, user_of(x_user_id), job_id))


@v2_router.post("/{job_id}/cancel", responses=_ONE_JOB)
def cancel_v2_job(
    deps: DepsDep, tenant: TenantDep, job_id: str, x_user_id: UserHeader = None
) -> V2Job:
    """Cancel now (ours takes effect at once: `canceled`); an ended job is returned as is."""
    job = _job_or_404(deps, tenant, user_of(x_user_id), job_id)
    try:
        job = cancel_job(deps, job.id)
    except AlreadyTerminal as exc:
        job = exc.job
    except JobNotFound:  # purged between the read and the cancel
        raise ApiError(404, "not_found", "no such job") from None
    return to_v2(deps, job)


@v2_router.get(
    "/{job_id}/events",
    responses={
        **_ONE_JOB,
        200: {
            "description": "Server-Sent Events: `status`, `progress`, `output` (spec catalogue).",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
    response_class=StreamingResponse,
)
async def v2_job_events(
    request: Request,
    deps: DepsDep,
    tenant: TenantDep,
    job_id: str,
    x_user_id: UserHeader = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The job's events as SSE; ends after the terminal status (docs/api-v2.md)."""
    try:
        seen = int(last_event_id) if last_event_id is not None else 0
    except ValueError:
        seen = -1
    if seen < 0:
        raise ApiError(400, "invalid_request", "Last-Event-ID must be an event id (0 or more)")
    return await open_stream(
        deps, request, tenant.id, user_of(x_user_id), job_id, seen, frame=v2_frame
    )
