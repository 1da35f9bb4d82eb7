"""Failed webhook deliveries: list them, re-send one (tenant-wide: webhooks are the tenant's)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.http_errors import error_doc
from app.api.ingress import DepsDep, TenantDep
from app.core.errors import ApiError
from app.core.schemas import WebhookView
from app.engine.redeliver import resend_webhook
from app.engine.views import JOB_ID, webhook_view

webhook_router = APIRouter()


class FailedDelivery(BaseModel):
    """A delivery that ended `dead`, with its log."""

    job_id: str
    webhook_id: str = Field(description="The `webhook-id` every attempt (and a re-send) carries.")
    event_type: str
    webhook: WebhookView


class FailedDeliveries(BaseModel):
    deliveries: list[FailedDelivery]


@webhook_router.get("/v1/webhooks/failed", tags=["webhooks"])
def list_failed(
    deps: DepsDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> FailedDeliveries:
    """The tenant's webhook deliveries that gave up, newest first."""
    listed: list[FailedDelivery] = []
    for delivery in deps.deliveries.failed_for(tenant.id, limit=limit):
        job = deps.jobs.find(delivery.job_id)
        view = webhook_view(deps, job) if job is not None else None
        if job is None or job.tenant_id != tenant.id or view is None:
            continue
        listed.append(
            FailedDelivery(
                job_id=job.id,
                webhook_id=delivery.msg_id,
                event_type=delivery.event_type,
                webhook=view,
            )
        )
    return FailedDeliveries(deliveries=listed)


@webhook_router.post(
    "/v1/jobs/{job_id}/webhook/resend",
    status_code=202,
    tags=["webhooks"],
    responses={
        404: error_doc("No such job of this tenant, or it has no webhook."),
        409: error_doc("The delivery is not dead (still pending, or delivered)."),
    },
)
def resend(deps: DepsDep, tenant: TenantDep, job_id: str) -> WebhookView:
    """Re-send a dead delivery once more: same webhook-id and body, a fresh signature."""
    job = deps.jobs.find(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or job.tenant_id != tenant.id or not job.webhook_url:
        raise ApiError(404, "not_found", "no such job with a webhook")
    if resend_webhook(deps, job) is None:
        raise ApiError(409, "webhook_not_failed", "the webhook delivery has not failed")
    view = webhook_view(deps, job)
    assert view is not None  # the job has a webhook
    return view
