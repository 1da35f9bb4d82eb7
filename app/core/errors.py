"""Every error the service raises on purpose, in one tree. A docstring is the default message.

    ComfySaasError                    the root: anything below is expected, never a bug
    ├── PipelineError                 permanent: the job fails with `code`
    │   ├── TransientError            retryable: the stage is tried again
    │   │   ├── ComfyUnavailable      ComfyUI did not answer
    │   │   ├── FetchUnavailable      an input's server failed for now
    │   │   ├── StorageUnavailable    object storage failed transiently
    │   │   └── DeliveryFailed        a webhook endpoint could not be reached
    │   ├── InvalidRequest            the client's request is wrong (a 4xx)
    │   │   ├── InvalidWorkflow
    │   │   ├── ProblemList           problems, each naming its input, node and field
    │   │   │   ├── InvalidTemplate   a template's graph or input schema is refused
    │   │   │   ├── InvalidInput      a template run's input is refused
    │   │   │   └── InvalidNodes      nodes' inputs refused (ComfyUI's `node_errors`; also
    │   │   │                         an InvalidWorkflow)
    │   │   ├── TemplatesOnly         the tenant runs registered templates only (HTTP 403)
    │   │   ├── TemplateNotFound      no such template or version (HTTP 404)
    │   │   ├── UrlRefused            the URL policy refused an input or webhook URL
    │   │   ├── SignedUrlInvalid      a signed download URL does not verify
    │   │   │   └── SignedUrlExpired  ... or verifies but has expired
    │   │   ├── ObjectNotFound        a signed URL names an object that is not stored
    │   │   ├── UploadNotFound        no such upload for this tenant and user (HTTP 404)
    │   │   ├── UploadExpired         the upload is past its expiry (HTTP 410)
    │   │   ├── UploadTooLarge        an upload or the inline inputs are over a limit (413)
    │   │   ├── UnsupportedUpload     the bytes are not a media type we accept (HTTP 415)
    │   │   ├── InvalidInlineData     an inline input's `data` is not base64 (HTTP 400)
    │   │   └── DirectUploadUnavailable  presigned PUTs need S3 storage (HTTP 400)
    │   ├── FetchFailed               an input could not be downloaded or is not valid media
    │   ├── RenderFailed              ComfyUI reported an error while running the graph
    │   ├── RenderTimeout             the job's deadline passed during render
    │   ├── RendererStuck             ComfyUI did not honour the interrupt: it is restarted
    │   ├── StageCancelled            the client cancelled the job while a stage worked
    │   │   └── RenderCancelled       ... during render
    │   └── UploadFailed              storage refused the outputs for good
    ├── BackendError                  the queue/dict backend failed (HTTP 503)
    │   ├── QueueItemTooLarge         a queue item is over 1 MiB (also a ValueError)
    │   └── QueueFull                 a queue stayed full for its put timeout (HTTP 503)
    ├── JobStateError                 the job state core refused an operation
    │   ├── AdmissionRejected         a cap or rate limit refused a new job (HTTP 429)
    │   ├── Backpressure              queues or render backlog at capacity (HTTP 503)
    │   ├── IdempotencyConflict       an idempotency key reused with another body (HTTP 409)
    │   ├── JobIdTaken                a racing create with the same job id won
    │   ├── AlreadyTerminal           the job had already ended (HTTP 409)
    │   └── JobNotFound               no such job (HTTP 404; also a KeyError)
    ├── TenantError                   a tenant operation was refused
    ├── ApiError                      an HTTP error a route raises on purpose
    ├── ClientError                   the Python queue client could not do what was asked
    │   ├── Unauthorized              the API key is missing, invalid or revoked
    │   ├── UnknownJob                no such job for this tenant and user
    │   ├── JobAlreadyEnded           cancel of a job that had already ended
    │   └── WaitTimeout               the job did not end in time (also a TimeoutError)
    ├── ApiClientError                a call through the HTTP client did not succeed
    │   ├── ApiUnreachable            the API could not be reached or did not answer in time
    │   ├── HttpApiError              the API answered with an error
    │   └── WaitTimedOut              the job did not end in time (also a TimeoutError)
    └── RunnerError                   the local pipeline cannot start

Library errors are translated at the boundary (`raise FetchFailed(...) from exc`), so no
library exception, and no traceback, reaches a client. The HTTP status of each branch is
decided in `app.api.http_errors`; the command line prints any `ComfySaasError` as one line.
Every class is defined here and imported from here (`app.state` re-exports the job state
core's four), so there is one place to read what can go wrong and how it is handled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from app.core.models import Job
    from app.core.schemas import JobView


class ComfySaasError(Exception):
    """The root of every error the service raises on purpose."""


class PipelineError(ComfySaasError):
    """Unexpected pipeline error."""

    retryable: ClassVar[bool] = False
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        super().__init__(self.message)


class TransientError(PipelineError):
    """Temporary failure; safe to retry."""

    retryable = True
    code = "transient_error"


class ComfyUnavailable(TransientError):
    """ComfyUI did not answer its health check."""

    code = "comfyui_unavailable"


class FetchUnavailable(TransientError):
    """An input's server failed for now (5xx, 429, connection refused); fetch is retried."""

    code = "fetch_unavailable"


class StorageUnavailable(TransientError):
    """Object storage failed; the upload will be retried."""

    code = "storage_unavailable"


class DeliveryFailed(TransientError):
    """The webhook endpoint could not be reached."""

    code = "delivery_failed"


class InvalidRequest(PipelineError):
    """The request is not valid."""

    code = "invalid_request"


class InvalidWorkflow(InvalidRequest):
    """The workflow is not a valid ComfyUI API-format graph."""

    code = "invalid_workflow"


class Problem:
    """One problem of a template or a run: where it is (input, node, field) and why."""

    __slots__ = ("field", "input", "node_id", "reason")

    def __init__(
        self,
        reason: str,
        *,
        input: str | None = None,
        node_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = reason
        self.input = input
        self.node_id = node_id
        self.field = field

    def text(self) -> str:
        where = []
        if self.input is not None:
            where.append(f"input '{self.input}'")
        if self.node_id is not None:
            where.append(f"node {self.node_id}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{' '.join(where)}: {self.reason}" if where else self.reason

    def as_dict(self) -> dict[str, str]:
        found = {"input": self.input, "node_id": self.node_id, "field": self.field}
        return {"reason": self.reason, **{k: v for k, v in found.items() if v is not None}}


class ProblemList(InvalidRequest):
    """Problems, each naming its input, node and field; the first one's are echoed."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0] if problems else Problem("refused")
        self.input = first.input
        self.node_id = first.node_id
        self.field = first.field
        shown = "; ".join(p.text() for p in problems[:8])
        more = f"; and {len(problems) - 8} more problems" if len(problems) > 8 else ""
        super().__init__(shown + more)


class InvalidTemplate(ProblemList):
    """The template's graph or input schema is not valid."""

    code = "invalid_template"


class InvalidInput(ProblemList):
    """An input of the template run is not valid."""

    code = "invalid_input"


class InvalidNodes(ProblemList, InvalidWorkflow):
    """Inputs of the workflow's nodes are not valid (each problem names its node and input).

    `node_errors` is the same in ComfyUI's own shape (`{node_id: {"class_type", "errors",
    "dependent_outputs"}}`), so a client written for ComfyUI's `/prompt` reads it as is.
    """

    code = "invalid_workflow"

    def __init__(self, problems: list[Problem], node_errors: Mapping[str, Any]) -> None:
        super().__init__(problems)
        self.node_errors = dict(node_errors)


class TemplatesOnly(InvalidRequest):
    """This tenant runs registered workflow templates only; send `workflow_id`."""

    code = "templates_only"


class TemplateNotFound(InvalidRequest):
    """No such workflow template or version."""

    code = "template_not_found"


class UrlRefused(InvalidRequest):
    """The URL is not allowed by the URL policy."""

    code = "url_refused"


class SignedUrlInvalid(InvalidRequest):
    """The download link is not valid."""

    code = "signed_url_invalid"


class SignedUrlExpired(SignedUrlInvalid):
    """The download link has expired; read the job again for a fresh one."""

    code = "signed_url_expired"


class ObjectNotFound(InvalidRequest):
    """The requested file does not exist (it may have been removed by retention)."""

    code = "not_found"


class UploadNotFound(InvalidRequest):
    """No such upload for this tenant and user."""

    code = "upload_not_found"


class UploadExpired(InvalidRequest):
    """The upload has expired; upload the file again."""

    code = "upload_expired"


class UploadTooLarge(InvalidRequest):
    """The file is over the upload size limit."""

    code = "upload_too_large"


class UnsupportedUpload(InvalidRequest):
    """The file is not an image, video or audio type this service accepts."""

    code = "unsupported_media_type"


class InvalidInlineData(InvalidRequest):
    """An inline input's `data` is not valid base64."""

    code = "invalid_base64"


class DirectUploadUnavailable(InvalidRequest):
    """Presigned uploads need S3 storage; send the file in the body instead."""

    code = "direct_upload_unavailable"


class FetchFailed(PipelineError):
    """An input could not be downloaded or is not valid media."""

    code = "fetch_failed"


class RenderFailed(PipelineError):
    """ComfyUI reported an error while running the workflow."""

    code = "render_failed"

    def __init__(
        self,
        message: str | None = None,
        *,
        node_id: str | None = None,
        node_type: str | None = None,
    ) -> None:
        super().__init__(message)
        #: The failing node, when ComfyUI named one (for `JobError.node_id`/`node_type`).
        self.node_id = node_id
        self.node_type = node_type


class RenderTimeout(PipelineError):
    """The job's deadline passed while it was rendering."""

    code = "timeout"


class RendererStuck(PipelineError):
    """ComfyUI did not stop this job's prompt within the interrupt grace: it holds the renderer."""

    code = "renderer_stuck"


class StageCancelled(PipelineError):
    """The job was cancelled while a stage worked on it."""

    code = "cancelled"


class RenderCancelled(StageCancelled):
    """The job was cancelled while it was rendering."""


class UploadFailed(PipelineError):
    """The outputs could not be stored."""

    code = "upload_failed"


# ---- the state backend and the job state core ------------------------------------------


class BackendError(ComfySaasError):
    """The queue/dict backend failed."""


class QueueItemTooLarge(BackendError, ValueError):
    """A queue item is over the 1 MiB limit; put ids in messages, not payloads."""


class QueueFull(BackendError):
    """A queue refused an item within its put timeout (Modal: 5,000 items per partition).

    Raised instead of blocking: a blocking Modal `put` on a full partition retries forever.
    """

    def __init__(self, queue: str, retry_after_s: int) -> None:
        super().__init__(f"queue {queue!r} is full")
        self.queue = queue
        self.retry_after_s = retry_after_s


class JobStateError(ComfySaasError):
    """The job state core refused an operation."""


class AdmissionRejected(JobStateError):
    """The request was not admitted; `code` says which limit, `retry_after_s` when to retry."""

    def __init__(self, code: str, message: str, retry_after_s: int, limit: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.limit = limit


class Backpressure(JobStateError):
    """Admission refused before any slot is taken: a stage queue or the render backlog is
    over its limit. The service is saturated, not broken; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.code = "overloaded"
        self.message = message
        self.retry_after_s = retry_after_s


class IdempotencyConflict(JobStateError):
    """The idempotency key was used with a different body, or its first use is in flight."""

    def __init__(self, message: str, job_id: str | None) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobIdTaken(JobStateError):
    """A job record under this id already exists (a racing create with the same id won)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"a job with id {job_id} already exists")
        self.job_id = job_id


class AlreadyTerminal(JobStateError):
    """The job had already ended; its terminal state cannot change."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is already {job.status}")
        self.job = job


class JobNotFound(JobStateError, KeyError):
    """No such job."""


class TenantError(ComfySaasError):
    """A tenant operation was refused; the message says why."""


# ---- the HTTP layer ------------------------------------------------------------------------


class ApiError(ComfySaasError):
    """An HTTP error a route raises on purpose; rendered in the common shape."""

    def __init__(
        self,
        http_status: int,
        code: str,
        message: str,
        /,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status = http_status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


# ---- the clients ---------------------------------------------------------------------------


class ClientError(ComfySaasError):
    """The client could not do what was asked."""


class Unauthorized(ClientError):
    """The API key is missing, invalid or revoked."""


class UnknownJob(ClientError):
    """No such job for this tenant and user (or intake has not admitted it yet)."""


class JobAlreadyEnded(ClientError):
    """The job had already ended, so it cannot be cancelled."""

    def __init__(self, view: JobView) -> None:
        super().__init__(f"job {view.id} is already {view.status.value}")
        self.view = view


class WaitTimeout(ClientError, TimeoutError):
    """The job did not end within the time allowed."""

    def __init__(self, job_id: str, timeout_s: float, last: JobView | None) -> None:
        super().__init__(f"job {job_id} did not end within {timeout_s:g} s")
        self.last = last


class ApiClientError(ComfySaasError):
    """A call to the API did not succeed."""


class ApiUnreachable(ApiClientError):
    """The API could not be reached or did not answer in time."""


class HttpApiError(ApiClientError):
    """The API answered with an error."""

    def __init__(self, status: int, code: str, message: str, body: Mapping[str, Any]) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class WaitTimedOut(ApiClientError, TimeoutError):
    """The job did not end within the time allowed."""


# ---- the local runner ----------------------------------------------------------------------


class RunnerError(ComfySaasError):
    """The local pipeline cannot start; the message says why and what to do."""
