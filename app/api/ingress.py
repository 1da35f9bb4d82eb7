"""The thin HTTP ingress: parse, authenticate, call intake/state/pipeline, render.

No business logic lives here. Routes are plain `def`s, so FastAPI runs them in its
thread pool: the state backend is synchronous (SQLite locally, blocking Modal calls in
production) and must not block the event loop. Errors are mapped to HTTP in
`app.api.http_errors`, one shape for all.

Run locally under uvicorn (`comfyui-saas dev`), on Modal behind `@modal.asgi_app()`:
both call `create_app(deps)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from app.api.files import files_router
from app.api.http_errors import BodyLimit, error_doc, install_error_handlers
from app.api.offload import store_work
from app.api.submissions import (
    BatchRequest,
    Submission,
    parse_model,
    parse_submission,
    submit,
)
from app.api.v2.schemas import V2JobCreate
from app.core.errors import ApiError, BackendError
from app.core.models import JobStatus
from app.core.schemas import USER_ID_PATTERN, JobRequest, JobView
from app.core.templates import TemplateJobRequest, WorkflowCreate
from app.engine.backpressure import check_backlog
from app.engine.deps import Deps
from app.engine.pipeline import cancel_job
from app.engine.views import JobList, owned_job, present
from app.stages.intake import catalog_fetch_due
from app.store.breaker import RenderBreaker
from app.store.tenants import Tenant

API_VERSION = "1.0.0"
DESCRIPTION = """\
Submit ComfyUI API-format workflows, follow their progress, download their outputs.

Every `/v1` route takes `Authorization: Bearer <api key>`; every `/v1/jobs` route also
takes `X-User-ID`, the end user the job belongs to. Errors always look like
`{"error": {"code": "...", "message": "..."}}`.
"""
MAX_PAGE = 100
_REF = "#/components/schemas/{model}"
#: Bodies the routes parse by hand (after authentication): their schemas are added here.
HAND_PARSED: tuple[type[BaseModel], ...] = (
    JobRequest,
    TemplateJobRequest,
    WorkflowCreate,
    BatchRequest,
    V2JobCreate,
)

#: A complete request using only core ComfyUI nodes (shown in /docs, used by fuzzing).
EXAMPLE_REQUEST: dict[str, Any] = {
    "workflow": {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    },
    "metadata": {"order": "A-1001"},
}

#: A template run (`POST /v1/workflows` registered `portrait`; see the README).
EXAMPLE_TEMPLATE_RUN: dict[str, Any] = {
    "workflow_id": "portrait@1",
    "inputs": {
        "prompt": "a cat in a hat",
        "seed": 42,
        "photo": {"url": "https://example.com/p.png"},
    },
}

_bearer = HTTPBearer(auto_error=False, description="A tenant API key (`csk_...`).")


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_doc("Missing, invalid or revoked API key."),
    422: error_doc("A header, parameter or the body is not valid; `details` says which."),
    503: error_doc("The state backend is briefly unavailable; retry after `Retry-After`."),
}
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTH_ERRORS,
    404: error_doc("No such job for this user."),
}


async def get_deps(request: Request) -> Deps:
    """The app's `Deps` (set by `create_app`)."""
    deps: Deps = request.app.state.deps
    return deps


DepsDep = Annotated[Deps, Depends(get_deps)]


async def authenticated_tenant(
    deps: DepsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant owning the bearer key; 401 otherwise."""
    key = credentials.credentials if credentials else None
    tenant = None if key is None else await store_work(deps, lambda: deps.tenants.authenticate(key))
    if tenant is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing, invalid or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


async def caller_user(
    x_user_id: Annotated[
        str,
        Header(
            alias="X-User-ID",
            pattern=USER_ID_PATTERN,
            description="The end user the job belongs to; jobs are visible to this user only.",
        ),
    ],
) -> str:
    """The end user named by `X-User-ID` (validated by its pattern)."""
    return x_user_id


async def raw_body(request: Request) -> bytes:
    """The request body, already bounded by `BodyLimit`."""
    return await request.body()


TenantDep = Annotated[Tenant, Depends(authenticated_tenant)]
UserDep = Annotated[str, Depends(caller_user)]


def parse_job_request(raw: bytes) -> Submission:
    """The body as a `JobRequest` or a template run; errors read like FastAPI's own 422s.

    Parsed by hand, after authentication, so an anonymous client gets a 401 for any
    body and the server does no work for it.
    """
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return parse_model(JobRequest, raw)  # the same 422 any non-object body gets
    return parse_submission(document)


router = APIRouter()


class Health(BaseModel):
    status: str
    version: str
    backend: str
    storage: str
    #: "open" while repeated render start-up failures stop GPU containers from being
    #: woken (jobs wait in the queue); "unknown" if the backend did not answer.
    render_circuit: Literal["closed", "open", "unknown"] = "closed"


@router.get("/health", tags=["service"])
async def health(deps: DepsDep) -> Health:
    """Liveness, and whether render's circuit breaker is open (one backend read)."""
    return await store_work(deps, lambda: _health(deps))


def _health(deps: Deps) -> Health:
    settings = deps.settings
    try:
        circuit: Literal["closed", "open", "unknown"] = (
            "open" if RenderBreaker(deps.backend, deps.clock, settings).is_open() else "closed"
        )
    except BackendError:
        circuit = "unknown"
    return Health(
        status="ok",
        version=API_VERSION,
        backend=settings.backend,
        storage=settings.storage,
        render_circuit=circuit,
    )


@router.post(
    "/v1/jobs",
    status_code=202,
    tags=["jobs"],
    responses={
        200: {"model": JobView, "description": "Replay: the job this Idempotency-Key made."},
        400: error_doc("The workflow or a limit was refused (e.g. unknown node types)."),
        403: error_doc("`user_id` in the body is not the `X-User-ID` caller."),
        409: error_doc("The Idempotency-Key was used with another body, or is in flight."),
        413: error_doc("The body is over the request size limit."),
        429: error_doc("A concurrency cap or the rate limit was hit; see `Retry-After`."),
        **_AUTH_ERRORS,
        503: error_doc(
            "At capacity (queue or render backlog) or the backend is briefly down; "
            "retry after `Retry-After`."
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": _REF.format(model="JobRequest")},
                            {"$ref": _REF.format(model="TemplateJobRequest")},
                        ]
                    },
                    "examples": {
                        "template": {
                            "summary": "Run a registered template (recommended)",
                            "value": EXAMPLE_TEMPLATE_RUN,
                        },
                        "graph": {"summary": "Run a raw graph", "value": EXAMPLE_REQUEST},
                    },
                }
            },
        },
    },
)
async def create_job(
    response: Response,
    deps: DepsDep,
    tenant: TenantDep,
    user_id: UserDep,
    body: Annotated[bytes, Depends(raw_body)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Retry-safe submission: the same key and body return the same job.",
        ),
    ] = None,
) -> JobView:
    """Submit a job, a raw graph or a template run (`workflow_id` + `inputs`).

    202 with its view, or 200 when an Idempotency-Key replays.
    """

    def work() -> JobView:
        check_backlog(deps)  # before anything is written: a refusal never holds a slot
        admission = submit(deps, tenant, user_id, parse_job_request(body), idempotency_key)
        response.status_code = 200 if admission.replayed else 202
        response.headers["Location"] = f"/v1/jobs/{admission.job.id}"
        return present(deps, admission.job)

    # Admission asks ComfyUI only for a missing or stale node catalog (`node_catalog`).
    return await store_work(deps, work, may_block=catalog_fetch_due(deps))


@router.get("/v1/jobs", tags=["jobs"], responses=_AUTH_ERRORS)
async def list_jobs(
    deps: DepsDep,
    tenant: TenantDep,
    user_id: UserDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    cursor: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9]{1,12}$",
            description="`next_cursor` of the previous page.",
        ),
    ] = None,
    status: JobStatus | None = None,
) -> JobList:
    """The caller's own jobs, newest first."""

    def listed() -> JobList:
        page = deps.jobs.list_for_user(
            tenant.id, user_id, limit=limit, cursor=cursor, status=status
        )
        jobs = [present(deps, job) for job in page.jobs]
        return JobList(jobs=jobs, next_cursor=page.next_cursor)

    return await store_work(deps, listed)


@router.get("/v1/jobs/{job_id}", tags=["jobs"], responses=_JOB_ERRORS)
async def get_job(deps: DepsDep, tenant: TenantDep, user_id: UserDep, job_id: str) -> JobView:
    """The job's status, progress and freshly signed output URLs."""
    return await store_work(deps, lambda: _job_view(deps, tenant, user_id, job_id))


def _job_view(deps: Deps, tenant: Tenant, user_id: str, job_id: str) -> JobView:
    job = owned_job(deps, tenant.id, user_id, job_id)
    if job is None:
        raise ApiError(404, "not_found", "no such job")
    return present(deps, job)


@router.delete(
    "/v1/jobs/{job_id}",
    tags=["jobs"],
    responses={**_JOB_ERRORS, 409: error_doc("The job had already ended.")},
)
def delete_job(deps: DepsDep, tenant: TenantDep, user_id: UserDep, job_id: str) -> JobView:
    """Cancel the job now, whatever its stage; 409 if it had already ended."""
    if owned_job(deps, tenant.id, user_id, job_id) is None:
        raise ApiError(404, "not_found", "no such job")
    return present(deps, cancel_job(deps, job_id))


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema plus the bodies the routes parse themselves (`HAND_PARSED`)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in HAND_PARSED:
                request_schema = model.model_json_schema(ref_template=_REF)
                components.update(request_schema.pop("$defs", {}))
                components[model.__name__] = request_schema
            components["BatchRequest"]["properties"]["jobs"]["items"] = BatchRequest.ITEM_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def create_app(deps: Deps) -> FastAPI:
    """The ingress ASGI app over `deps` (uvicorn locally, `@modal.asgi_app()` on Modal)."""
    app = FastAPI(
        title="comfyui-saas",
        version=API_VERSION,
        description=DESCRIPTION,
        docs_url=None,  # served by docs_router from bundled assets, not a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.deps = deps
    install_error_handlers(app)
    # Imported here: the uploads router uses this module's auth dependencies.
    from app.api.uploads import MULTIPART_SLACK_BYTES, UPLOADS_PATH, uploads_router

    app.add_middleware(
        BodyLimit,
        max_bytes=deps.settings.max_request_bytes,
        per_path={UPLOADS_PATH: deps.settings.upload_max_bytes + MULTIPART_SLACK_BYTES},
    )
    app.include_router(router)
    app.include_router(files_router)
    # Imported here: these routers use this module's auth dependencies.
    from app.api.batch import batch_router
    from app.api.docs_route import docs_router
    from app.api.events import events_router
    from app.api.metrics_route import metrics_router
    from app.api.v2.routes import v2_router
    from app.api.webhook_routes import webhook_router
    from app.api.workflows import workflows_router

    app.include_router(workflows_router)
    app.include_router(batch_router)
    app.include_router(webhook_router)
    app.include_router(uploads_router)
    app.include_router(v2_router)
    app.include_router(events_router)
    app.include_router(docs_router("/openapi.json", app.title))
    if deps.settings.backend == "local":
        app.include_router(metrics_router)  # on Modal the counters go to the logs instead
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
