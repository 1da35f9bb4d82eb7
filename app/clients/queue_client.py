"""A Python client that talks to the pipeline's queues and dicts directly (no HTTP).

For code that runs next to the pipeline (a Modal function, a local script):

    client = Client.from_settings(api_key="csk_...", user_id="alice")
    job_id = client.enqueue({"workflow": graph})
    view = client.wait(job_id, timeout_s=600)

`enqueue` puts an `IntakeMessage` on the intake queue and wakes the intake stage; the
intake worker authenticates the key and admits the job exactly as `POST /v1/jobs` does.
Before the put, a pending-intake marker (the request and the tenant, no key) is written
under the job id, so a request lost with an intake worker is re-admitted by
`fail_stale`. A refusal (a cap, a bad workflow) becomes a `failed` job under the same id, so `get`
and `wait` report it. Code that puts an `IntakeMessage` on the `modal.Queue` itself,
without the wake-up, is not lost: the scheduled sweep drains the intake queue within
about a minute.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pydantic import ValidationError

from app.core.config import Settings, get_settings
from app.core.errors import (
    AlreadyTerminal,
    ClientError,
    InvalidRequest,
    JobAlreadyEnded,
    Unauthorized,
    UnknownJob,
    WaitTimeout,
)
from app.core.ids import new_job_id
from app.core.models import Stage
from app.core.polling import poll_until_ended
from app.core.schemas import USER_ID, IntakeMessage, JobRequest, JobView
from app.engine.backpressure import CLIENT_ADMISSION_QUEUES, check_backlog
from app.engine.deps import Deps, Waker, build_deps
from app.engine.pipeline import cancel_job
from app.engine.uploads import create_upload
from app.engine.views import owned_job, present
from app.stages.intake import check_request
from app.store.intakes import PendingIntake
from app.store.tenants import Tenant


class Client:
    """Submit and follow jobs as one tenant's user, through the queues and dicts."""

    def __init__(self, deps: Deps, api_key: str, user_id: str) -> None:
        if not USER_ID.fullmatch(user_id):
            raise ClientError("user id must match ^[A-Za-z0-9._:@-]{1,128}$")
        self.deps = deps
        self.api_key = api_key
        self.user_id = user_id
        #: What `wait` reads and sleeps with; tests hand in a fake clock.
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        api_key: str | None = None,
        user_id: str,
        waker: Waker | None = None,
    ) -> Client:
        """A client on the configured backend; the key defaults to `settings.api_key`."""
        settings = settings or get_settings()
        key = api_key if api_key is not None else settings.api_key.get_secret_value()
        return cls(build_deps(settings, waker=waker), key, user_id)

    def tenant(self) -> Tenant:
        """The tenant of the API key; raises `Unauthorized`."""
        tenant = self.deps.tenants.authenticate(self.api_key)
        if tenant is None:
            raise Unauthorized()
        return tenant

    def upload(self, data: bytes) -> str:
        """Store a file as this user's upload; its `upload_id` for a job's `inputs`
        (`{"name": "photo.png", "upload_id": ...}`). Raises as `POST /v1/uploads` does."""
        return create_upload(self.deps, self.tenant().id, self.user_id, data).id

    def enqueue(
        self,
        request: JobRequest | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Queue a job for intake and wake it; returns the new job's id at once.

        Raises `Unauthorized` for a bad key, `InvalidRequest` for a body that is not a
        `JobRequest` and `Backpressure` (retry after `retry_after_s`) while the queues are
        at capacity, and `InvalidRequest` (`InvalidWorkflow`, `UrlRefused`, ...) for what
        intake's `check_request` refuses; caps are decided by intake.
        """
        tenant = self.tenant()  # fail fast; intake authenticates again
        check_backlog(self.deps, CLIENT_ADMISSION_QUEUES)
        if not isinstance(request, JobRequest):
            try:
                request = JobRequest.model_validate(dict(request))
            except ValidationError as exc:
                raise InvalidRequest(f"not a job request: {exc.errors()[0]['msg']}") from exc
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise InvalidRequest("idempotency key must be 1 to 255 characters")
        # Refused here, not as a failed job after the queue: the caller sees the 400's error.
        check_request(request, self.deps)
        job_id = new_job_id()
        message = IntakeMessage(
            job_id=job_id,
            api_key=self.api_key,
            user_id=self.user_id,
            request=request,
            idempotency_key=idempotency_key,
        )
        # Durable before the message can be lost with an intake worker (the queue's get is
        # destructive); maintenance re-admits a marker whose job never appeared.
        self.deps.intakes.mark(
            PendingIntake(
                job_id=job_id,
                tenant_id=tenant.id,
                user_id=self.user_id,
                request=request,
                idempotency_key=idempotency_key,
                at=self.deps.clock(),
            )
        )
        self.deps.queue(Stage.INTAKE).put(message.model_dump_json())
        self.deps.waker(Stage.INTAKE)
        return job_id

    def get(self, job_id: str) -> JobView:
        """The job's view with fresh output URLs; raises `UnknownJob` for others' jobs."""
        tenant = self.tenant()
        job = owned_job(self.deps, tenant.id, self.user_id, job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r}")
        return present(self.deps, job)

    def wait(
        self,
        job_id: str,
        timeout_s: float = 600.0,
        poll_s: float = 1.0,
        on_update: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Poll until the job ends; returns its final view or raises `WaitTimeout`.

        A job not yet admitted by intake counts as pending, so call this right after
        `enqueue`; an id that never appears times out.
        """

        def fetch() -> JobView | None:
            try:
                view = self.get(job_id)
            except UnknownJob:
                return None
            if on_update is not None:
                on_update(view)
            return view

        def timed_out(last: JobView | None) -> NoReturn:
            raise WaitTimeout(job_id, timeout_s, last)

        return poll_until_ended(
            fetch,
            timeout_s=timeout_s,
            poll_s=poll_s,
            on_timeout=timed_out,
            clock=self.clock,
            sleep=self.sleep,
        )

    def cancel(self, job_id: str) -> JobView:
        """Cancel the job; raises `UnknownJob` or `JobAlreadyEnded`."""
        self.get(job_id)  # ownership
        try:
            job = cancel_job(self.deps, job_id)
        except AlreadyTerminal as exc:
            raise JobAlreadyEnded(present(self.deps, exc.job)) from None
        return present(self.deps, job)
