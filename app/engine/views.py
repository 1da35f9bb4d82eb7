"""What clients are shown, shared by the HTTP ingress and the Python client.

Ownership is decided here, once: a job belongs to a (tenant, user) pair, and anything
else gets the same answer as a job that does not exist, so ids cannot be probed.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from app.core.models import Job, OutputRef
from app.core.schemas import JobView, WebhookAttemptView, WebhookView, job_view
from app.engine.deps import Deps

#: Job ids are ours (`job_` + hex) or a client's queued id; anything else is nobody's job.
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class JobList(BaseModel):
    """One page of the caller's jobs, newest first."""

    jobs: list[JobView]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )


def sign_output(deps: Deps, out: OutputRef) -> str:
    """A download URL of one output, signed now (never stored, never reused)."""
    return deps.objects.url(
        out.key,
        filename=out.filename,
        content_type=out.content_type,
        expires_s=deps.settings.presign_expiry_s,
    )


def present(deps: Deps, job: Job) -> JobView:
    """The job view with output URLs signed now (never stored, never reused)."""
    return job_view(job, signed_urls(deps, job), webhook_view(deps, job))


def signed_urls(deps: Deps, job: Job) -> list[str]:
    """One download URL per output, signed now for `presign_expiry_s`."""
    return [sign_output(deps, out) for out in job.outputs]


def owned_job(deps: Deps, tenant_id: str, user_id: str, job_id: str) -> Job | None:
    """The job if it exists and belongs to this tenant and user, else None."""
    if not JOB_ID.fullmatch(job_id):
        return None
    job = deps.jobs.find(job_id)
    if job is None or job.tenant_id != tenant_id or job.user_id != user_id:
        return None
    return job


def webhook_view(deps: Deps, job: Job) -> WebhookView | None:
    """The delivery log as clients see it (no URL, no signatures)."""
    if not job.webhook_url:
        return None
    delivery = deps.deliveries.get(job.id)
    if delivery is None:
        return WebhookView(state="pending")
    return WebhookView(
        state=delivery.state,
        next_attempt_at=delivery.next_attempt_at if delivery.state == "pending" else None,
        attempts=[
            WebhookAttemptView(
                attempt=a.attempt,
                at=a.at,
                status_code=a.status_code,
                outcome=a.outcome,
                reason=a.reason,
            )
            for a in delivery.attempts
        ],
    )
