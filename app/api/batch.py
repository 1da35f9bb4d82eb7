"""`POST /v1/jobs/batch`: many submissions for one user, each admitted on its own.

Items are admitted in order through the same path as `POST /v1/jobs` (the strict caps
and the rate limit count each one), so a batch of 8 against a cap of 5 gives 5 jobs and 3
refusals, whatever other batches run at the same time. The answer is 200 with one result
per item: the job (202, or 200 for an idempotent replay) or the refusal in the common
error shape with its status; `Retry-After` is the soonest any refused item may retry.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from app.api.http_errors import (
    ErrorDetail,
    error_doc,
    invalid_request_fields,
    rate_limit_headers,
    summarize,
    validation_details,
)
from app.api.ingress import DepsDep, TenantDep, UserDep, raw_body
from app.api.submissions import BatchRequest, parse_model, parse_submission, submit
from app.core.errors import (
    AdmissionRejected,
    ApiError,
    BackendError,
    ComfyUnavailable,
    IdempotencyConflict,
    InvalidRequest,
)
from app.core.schemas import JobView
from app.engine.backpressure import check_backlog
from app.engine.deps import Deps
from app.engine.views import present
from app.store.tenants import Tenant

batch_router = APIRouter()


class BatchItemResult(BaseModel):
    """One item's outcome: `job` when admitted, `error` when refused."""

    index: int
    status: int = Field(description="The status POST /v1/jobs would have answered.")
    job: JobView | None = None
    error: ErrorDetail | None = None


class BatchResult(BaseModel):
    results: list[BatchItemResult]
    accepted: int
    refused: int


def _refusal(index: int, status: int, code: str, message: str, **extra: Any) -> BatchItemResult:
    return BatchItemResult(
        index=index, status=status, error=ErrorDetail(code=code, message=message, **extra)
    )


def _one(
    deps: Deps, tenant: Tenant, user_id: str, index: int, item: dict[str, Any]
) -> tuple[BatchItemResult, int | None]:
    """The result of item `index` and, for a 429, its Retry-After."""
    document = dict(item)
    key = document.pop("idempotency_key", None)
    try:
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
            raise ApiError(422, "validation_error", "idempotency_key must be 1-255 characters")
        admission = submit(deps, tenant, user_id, parse_submission(document), key)
    except RequestValidationError as exc:
        details = validation_details(exc.errors())
        return _refusal(index, 422, "validation_error", summarize(details), details=details), None
    except AdmissionRejected as exc:
        refusal = _refusal(
            index,
            429,
            exc.code,
            exc.message,
            retry_after_s=exc.retry_after_s,
            limit=exc.limit,
            headers=rate_limit_headers(exc),
        )
        return refusal, exc.retry_after_s
    except InvalidRequest as exc:
        status, extra = invalid_request_fields(exc)
        return _refusal(index, status, exc.code, exc.message, **extra), None
    except IdempotencyConflict as exc:
        return _refusal(index, 409, "idempotency_conflict", str(exc)), None
    except ApiError as exc:
        return _refusal(index, exc.status, exc.code, exc.message, **exc.extra), None
    except ComfyUnavailable as exc:
        return _refusal(index, 503, exc.code, exc.message), None
    except BackendError:
        # Items before it stay admitted; this one (and only this one) may be retried.
        message = "the state backend is unavailable; try again shortly"
        return _refusal(index, 503, "backend_unavailable", message), None
    status = 200 if admission.replayed else 202
    return BatchItemResult(index=index, status=status, job=present(deps, admission.job)), None


@batch_router.post(
    "/v1/jobs/batch",
    tags=["jobs"],
    responses={
        413: error_doc("The body is over the request size limit."),
        422: error_doc("The body is not a batch, or it has more items than allowed."),
        401: error_doc("Missing, invalid or revoked API key."),
        503: error_doc("The state backend is briefly unavailable; retry after `Retry-After`."),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}
            },
        }
    },
)
def create_batch(
    response: Response,
    deps: DepsDep,
    tenant: TenantDep,
    user_id: UserDep,
    body: Annotated[bytes, Depends(raw_body)],
) -> BatchResult:
    """Submit up to `max_batch_jobs` jobs for one user; per item the job or the refusal.

    Each item is admitted on its own against the caps and the rate limit, exactly as if
    it had been sent alone; `idempotency_key` in an item makes that item retry-safe.
    """
    batch = parse_model(BatchRequest, body)
    check_backlog(deps)  # once for the batch, before anything is written
    limit = deps.settings.max_batch_jobs
    if len(batch.jobs) > limit:
        raise ApiError(
            422, "batch_too_large", f"{len(batch.jobs)} jobs; a batch takes at most {limit}"
        )
    results: list[BatchItemResult] = []
    waits: list[int] = []
    for index, item in enumerate(batch.jobs):
        result, wait = _one(deps, tenant, user_id, index, item)
        results.append(result)
        if wait is not None:
            waits.append(wait)
    if waits:
        response.headers["Retry-After"] = str(min(waits))
    accepted = sum(1 for r in results if r.job is not None)
    return BatchResult(results=results, accepted=accepted, refused=len(results) - accepted)
