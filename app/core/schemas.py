"""What clients send and receive: the job request and the job view (the HTTP contract)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.models import InputSpec, Job, JobStatus, Stage, StatusDetail, TemplateRef

USER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
USER_ID = re.compile(USER_ID_PATTERN)
INPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


UPLOAD_ID_PATTERN = r"^upl_[0-9a-f]{32}$"


class InputField(BaseModel):
    """A media input visible to the workflow as `name`, from exactly one of: `url` (an
    https URL to download), `upload_id` (from `POST /v1/uploads`) or `data` (base64)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="File name the workflow refers to, e.g. in LoadImage.")
    url: str | None = Field(
        default=None, max_length=2048, description="https URL to download the file from."
    )
    upload_id: str | None = Field(
        default=None, pattern=UPLOAD_ID_PATTERN, description="An id from POST /v1/uploads."
    )
    data: str | None = Field(
        default=None,
        description="The file itself, base64 (a `data:...;base64,` prefix is allowed); "
        "all inline inputs of a job together are limited (inline_input_max_bytes).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> InputField:
        given = [n for n in ("url", "upload_id", "data") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("an input needs exactly one of url, upload_id or data")
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not INPUT_NAME.fullmatch(value) or ".." in value:
            raise ValueError(
                "input name must be 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return value


class JobRequest(BaseModel):
    """A job: a ComfyUI API-format workflow plus the media it loads."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any] = Field(
        description="ComfyUI API-format graph: node id -> {class_type, inputs}."
    )
    inputs: list[InputField] = Field(default_factory=list)
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_events: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Extra webhook events to receive: `job.started` (each stage start) and "
        "`job.progress` (throttled). The terminal event is always sent.",
    )
    user_id: str | None = Field(default=None, description="Must equal X-User-ID if given.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Echoed back as is.")
    timeout_s: int | None = Field(default=None, ge=1)

    @field_validator("workflow")
    @classmethod
    def _non_empty(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("workflow must be a non-empty ComfyUI API-format graph")
        return value

    @field_validator("inputs")
    @classmethod
    def _unique_names(cls, value: list[InputField]) -> list[InputField]:
        names = [i.name for i in value]
        if len(names) != len(set(names)):
            raise ValueError("input names must be unique")
        return value

    def input_specs(self) -> list[InputSpec]:
        """The inputs as stored on the job; inline `data` must be stored as an upload
        first (`app.engine.uploads.resolve_inputs`), so it is refused here."""
        if any(i.data is not None for i in self.inputs):
            raise ValueError("inline inputs must be stored as uploads first")
        return [InputSpec(name=i.name, url=i.url or "", upload_id=i.upload_id) for i in self.inputs]


class IntakeMessage(BaseModel):
    """A job request put on the intake queue by a Python client."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1, max_length=64)
    #: Empty on a message maintenance re-admitted: its pending-intake marker vouches.
    api_key: str
    user_id: str
    request: JobRequest
    idempotency_key: str | None = Field(default=None, max_length=255)


class OutputView(BaseModel):
    filename: str
    content_type: str
    size: int
    url: str = Field(description="Signed download URL, freshly issued on every read.")


class ErrorView(BaseModel):
    code: str
    message: str
    node_id: str | None = None
    node_type: str | None = None


class Timings(BaseModel):
    queue_wait_s: float | None = None
    #: Time spent waiting for a renderer (busy or down); not counted by the job's timeout.
    renderer_wait_s: float = 0.0
    fetch_s: float | None = None
    render_s: float | None = None
    upload_s: float | None = None
    total_s: float | None = None


class WebhookAttemptView(BaseModel):
    attempt: int
    at: float
    status_code: int | None = None
    outcome: str
    reason: str = ""


class WebhookView(BaseModel):
    """The job's webhook delivery log: `pending`, then `delivered` or `dead`."""

    state: str
    attempts: list[WebhookAttemptView] = Field(default_factory=list)
    next_attempt_at: float | None = None


class JobView(BaseModel):
    """A job as a client sees it."""

    id: str
    status: JobStatus
    stage: Stage
    progress: float
    progress_detail: dict[str, Any] = Field(default_factory=dict)
    detail: StatusDetail | None = Field(
        default=None,
        description=(
            "While in render: waiting_for_renderer, rendering or renderer_unavailable "
            "(ComfyUI not answering; the job stays queued and its timeout is not used up)."
        ),
    )
    queue_position: int | None = Field(
        default=None,
        description="While waiting for a renderer: jobs ahead in the render queue at admission.",
    )
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    timings: Timings
    outputs: list[OutputView] = Field(default_factory=list)
    error: ErrorView | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    webhook: WebhookView | None = None
    template: TemplateRef | None = Field(
        default=None, description="The template and version the job ran, with its inputs."
    )


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def timings_of(job: Job) -> Timings:
    """Per-stage timings: queue wait before the first stage, then each stage's run time."""
    times = job.stage_times
    fetch, render, upload = times.get(Stage.FETCH), times.get(Stage.RENDER), times.get(Stage.UPLOAD)
    return Timings(
        queue_wait_s=_span(job.created_at, fetch.started_at if fetch else None),
        renderer_wait_s=round(job.renderer_wait_s, 3),
        fetch_s=_span(fetch.started_at, fetch.finished_at) if fetch else None,
        render_s=_span(render.started_at, render.finished_at) if render else None,
        upload_s=_span(upload.started_at, upload.finished_at) if upload else None,
        total_s=_span(job.created_at, job.finished_at),
    )


def job_view(job: Job, output_urls: list[str], webhook: WebhookView | None = None) -> JobView:
    """The client's view of a job; `output_urls` are freshly signed, one per output."""
    return JobView(
        id=job.id,
        status=job.status,
        stage=job.stage,
        progress=round(job.progress, 4),
        progress_detail=job.progress_detail,
        detail=job.status_detail(),
        queue_position=(
            job.queue_position if job.status_detail() is StatusDetail.WAITING_FOR_RENDERER else None
        ),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        timings=timings_of(job),
        outputs=[
            OutputView(filename=o.filename, content_type=o.content_type, size=o.size, url=url)
            for o, url in zip(job.outputs, output_urls, strict=True)
        ],
        error=ErrorView(**job.error.model_dump()) if job.error else None,
        metadata=job.metadata,
        webhook=webhook,
        template=job.template,
    )
