"""The pipeline's error tree. An exception's docstring is its default message.

    PipelineError                 permanent: the job fails with `code`
    ├── TransientError            retryable: the stage is tried again
    │   ├── ComfyUnavailable      ComfyUI did not answer
    │   ├── StorageUnavailable    object storage failed transiently
    │   └── DeliveryFailed        a webhook endpoint could not be reached
    ├── InvalidRequest            the client's request is wrong (a 4xx)
    │   ├── InvalidWorkflow
    │   ├── UrlRefused            the URL policy refused an input or webhook URL
    │   ├── SignedUrlInvalid      a signed download URL does not verify
    │   │   └── SignedUrlExpired  ... or verifies but has expired
    │   └── ObjectNotFound        a signed URL names an object that is not stored
    ├── FetchFailed               an input could not be downloaded or is not valid media
    ├── RenderFailed              ComfyUI reported an error while running the graph
    ├── RenderTimeout             the job's deadline passed during render
    ├── RenderCancelled           the client cancelled the job during render
    └── UploadFailed              storage refused the outputs for good

Library errors are translated at the boundary (`raise FetchFailed(...) from exc`), so no
library exception, and no traceback, reaches a client.
"""

from __future__ import annotations

from typing import ClassVar


class PipelineError(Exception):
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


class RenderCancelled(PipelineError):
    """The job was cancelled while it was rendering."""

    code = "cancelled"


class UploadFailed(PipelineError):
    """The outputs could not be stored."""

    code = "upload_failed"
