"""The bodies of Comfy's v2 job API (`Comfy-Org/comfy-api-proxy` spec/openapi.yaml).

Field names, types and required-ness follow that spec's `Job`, `Progress`, `Output`,
`JobError`, `JobUrls` and `JobStatus`; nullable fields are always present (the spec lists
them as required), so a strict client model accepts every answer. Prefixed `V2` so the
OpenAPI components do not collide with our own `JobView`, `JobStatus`...
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The spec's `JobStatus`; `canceling` and `expired` are never produced here (docs/api-v2.md).
V2Status = Literal["queued", "running", "succeeded", "canceling", "canceled", "failed", "expired"]
#: The spec's `OutputType`.
V2OutputType = Literal["image", "video", "audio", "text", "file", "latent"]


class V2JobCreate(BaseModel):
    """`POST /api/v2/jobs`: an API-format graph, verbatim (the spec's request body).

    `metadata` is the proxy's extension (echoed back nowhere in v2, kept on our job);
    `webhook_url`, `inputs` and `extra_data` are refused (see docs/api-v2.md).
    """

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(description="API-format workflow graph, verbatim.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Kept with the job (our `metadata`)."
    )


class V2Progress(BaseModel):
    value: float = Field(ge=0, le=1, description="Overall fraction.")
    nodes_done: int
    nodes_total: int
    current_node: str | None = None
    current_node_class: str | None = None
    step: int | None = None
    steps: int | None = None
    message: str | None = None


class V2Output(BaseModel):
    node_id: str = Field(description="Not recorded by this server: always empty.")
    name: str
    type: V2OutputType
    content_type: str
    size_bytes: int
    id: str = Field(description="`<job id>.<index>`; there is no /api/v2/assets here.")
    hash: str | None = None
    url: str = Field(description="Signed download URL, freshly issued on every read.")
    url_expires_at: datetime


class V2JobError(BaseModel):
    code: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    traceback: str | None = None


class V2JobUrls(BaseModel):
    self: str
    events: str
    cancel: str


class V2Job(BaseModel):
    """The spec's `Job`."""

    id: str
    status: V2Status
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime
    queue_position: int | None
    progress: V2Progress | None
    outputs: list[V2Output]
    error: V2JobError | None
    metrics: dict[str, int | None]
    urls: V2JobUrls


class V2JobList(BaseModel):
    """`GET /api/v2/jobs` (not in the synced spec; the proxy's local listing, paginated)."""

    jobs: list[V2Job]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )
