"""One job submission, raw graph or template run, from body to admission (single and batch).

`POST /v1/jobs` and each item of `POST /v1/jobs/batch` take either a `JobRequest` (a raw
graph) or a `TemplateJobRequest` (`workflow_id` + named inputs); which one is decided by
the presence of `workflow_id`, so a body is never half read as the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.core.errors import ApiError
from app.core.models import TemplateRef
from app.core.schemas import JobRequest
from app.core.templates import TemplateJobRequest
from app.engine.deps import Deps
from app.engine.templates import prepare_run
from app.stages.intake import admit
from app.store.jobs import Admission, body_fingerprint
from app.store.tenants import Tenant

Submission = JobRequest | TemplateJobRequest
M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], raw: bytes | dict[str, Any]) -> M:
    """`raw` as `model`; errors read like FastAPI's own 422s (loc starts with "body")."""
    try:
        if isinstance(raw, dict):
            return model.model_validate(raw)
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def parse_submission(document: dict[str, Any]) -> Submission:
    """A template run if the body names a `workflow_id`, else a raw-graph request."""
    if "workflow_id" in document:
        return parse_model(TemplateJobRequest, document)
    return parse_model(JobRequest, document)


@dataclass(frozen=True, slots=True)
class Prepared:
    """What `admit` takes for one submission."""

    request: JobRequest
    template: TemplateRef | None = None
    fingerprint: str | None = None


def prepare_submission(deps: Deps, tenant: Tenant, submission: Submission) -> Prepared:
    """A raw request as is; a template run resolved into its graph (refused by input)."""
    if isinstance(submission, JobRequest):
        return Prepared(request=submission)
    run = prepare_run(deps, tenant, submission)
    return Prepared(
        request=run.request,
        template=run.template,
        # What the client sent, so a retry with a "random" seed still replays.
        fingerprint=body_fingerprint(submission.model_dump(mode="json")),
    )


def submit(
    deps: Deps,
    tenant: Tenant,
    user_id: str,
    submission: Submission,
    idempotency_key: str | None,
) -> Admission:
    """Check, resolve and admit one submission; raises as `admit` does."""
    if submission.user_id is not None and submission.user_id != user_id:
        raise ApiError(403, "user_mismatch", "user_id in the body does not match X-User-ID")
    prepared = prepare_submission(deps, tenant, submission)
    return admit(
        deps,
        tenant,
        user_id,
        prepared.request,
        idempotency_key=idempotency_key,
        template=prepared.template,
        fingerprint=prepared.fingerprint,
    )


class BatchRequest(BaseModel):
    """`POST /v1/jobs/batch`: up to `max_batch_jobs` submissions for one user.

    Each item is a `JobRequest` or a `TemplateJobRequest` plus an optional
    `idempotency_key`; items are read one by one, so a bad item is refused alone.
    """

    model_config = ConfigDict(extra="forbid")

    jobs: list[dict[str, Any]] = Field(min_length=1)

    #: The schema of one item, put in place by the OpenAPI builder (pydantic would try to
    #: resolve these references itself).
    ITEM_SCHEMA: ClassVar[dict[str, Any]] = {
        "oneOf": [
            {"$ref": "#/components/schemas/JobRequest"},
            {"$ref": "#/components/schemas/TemplateJobRequest"},
        ],
        "description": "Either body of POST /v1/jobs, plus an optional `idempotency_key`.",
    }
