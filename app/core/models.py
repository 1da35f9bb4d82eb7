"""Job records and the small value types around them (pydantic, stored as JSON)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    """Where a job is in its life; the last three are terminal and never change."""

    QUEUED = "queued"  #: admitted, waiting for its first stage
    RUNNING = "running"  #: a stage holds it
    COMPLETED = "completed"  #: outputs stored
    FAILED = "failed"  #: stopped by an error; `error` says which
    CANCELLED = "cancelled"  #: stopped by the client


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class Stage(StrEnum):
    """The pipeline's stages, in order."""

    INTAKE = "intake"
    FETCH = "fetch"
    RENDER = "render"
    UPLOAD = "upload"
    NOTIFY = "notify"


class Record(BaseModel):
    """Base of stored records: unknown fields are ignored so old readers survive."""

    model_config = ConfigDict(extra="ignore")


class JobError(Record):
    """Why a job failed, safe to show to the client (never a traceback)."""

    code: str
    message: str
    node_id: str | None = None
    node_type: str | None = None


class OutputRef(Record):
    """One stored output file."""

    filename: str
    content_type: str
    size: int
    key: str  #: storage key; URLs are presigned from it on every read


class InputSpec(Record):
    """A media input visible to the workflow as `name`: fetched from `url`, or read from
    the upload `upload_id` (a file sent to `POST /v1/uploads` or an inline base64 input,
    which intake stores as an upload so the job record stays small)."""

    name: str
    url: str = ""
    upload_id: str | None = None


class TemplateRef(Record):
    """The template a job was made from, and the values its inputs resolved to."""

    id: str  #: `name@version`
    name: str
    version: int
    #: Every input's resolved value (a random seed as drawn; media as `{"url": ...}`).
    inputs: dict[str, Any] = Field(default_factory=dict)


class SlotRef(Record):
    """One admission slot held by a job: scope, index, generation."""

    scope: str
    index: int
    generation: int


class StageTimes(Record):
    """When a stage's message was queued, picked up and finished (unix seconds)."""

    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


class StatusDetail(StrEnum):
    """Why a job that is not rendering yet is waiting (the job view's `detail`)."""

    WAITING_FOR_RENDERER = "waiting_for_renderer"  #: queued behind other jobs
    RENDERING = "rendering"  #: ComfyUI is running the job's prompt
    RENDERER_UNAVAILABLE = "renderer_unavailable"  #: ComfyUI not answering; kept queued


class JobEvent(Record):
    """One entry of a job's event log (`GET /v1/jobs/{id}/events`); `id` grows per job."""

    id: int
    type: str
    at: float
    data: dict[str, Any] = Field(default_factory=dict)


class Job(Record):
    """A job as its holder wrote it; status reads merge in the terminal decision."""

    id: str
    tenant_id: str
    user_id: str
    status: JobStatus = JobStatus.QUEUED
    stage: Stage = Stage.INTAKE
    progress: float = 0.0
    #: Per-node progress from the renderer: node_id, node_type, value, max, nodes_done,
    #: nodes_total.
    progress_detail: dict[str, Any] = Field(default_factory=dict)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    #: Bumped each time fail_stale hands the job to a stage again (a fencing token).
    epoch: int = 0
    error: JobError | None = None
    outputs: list[OutputRef] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = None
    #: Non-terminal webhook events the client opted in to (`job.started`, `job.progress`).
    webhook_events: list[str] = Field(default_factory=list)
    timeout_s: int
    inputs: list[InputSpec] = Field(default_factory=list)
    slots: list[SlotRef] = Field(default_factory=list)
    stage_times: dict[Stage, StageTimes] = Field(default_factory=dict)
    lease_until: float | None = None
    #: Seconds this job spent waiting for a renderer (render queue, ComfyUI down) in
    #: earlier render attempts: the deadline does not count them, the queue-wait limit does.
    renderer_wait_s: float = 0.0
    #: Modal FunctionCall id of the render holding the job (cancel stops it).
    render_call_id: str | None = None
    #: Set when the job ran a registered template (its graph is stored resolved).
    template: TemplateRef | None = None
    #: Why the job waits or what it is doing in render (None before render).
    detail: StatusDetail | None = None
    #: Jobs ahead in the render queue when it was admitted (the admission's cached reading).
    queue_position: int | None = None
    #: The job's event log, written with the record (bounded: see `app.engine.events`).
    events: list[JobEvent] = Field(default_factory=list)
    #: The id of the last event recorded (events may have been trimmed from the log).
    event_seq: int = 0
    #: What the job owns beyond its id, for its purge (never shown to clients): its
    #: position in its user's index and its idempotency record's key. Kept here, not in
    #: the active entry, so admission writes them with the record and the release reads
    #: them from the record it already holds (issue 12: one call fewer in each).
    index_position: int | None = None
    idempotency_record: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def deadline(self) -> float:
        """When the job must be finished: its own work counts, waiting for a renderer not."""
        return self.created_at + self.timeout_s + self.renderer_wait_s

    def waiting_for_renderer(self) -> bool:
        """Queued for render (or parked for another try) with no worker holding it."""
        return self.stage is Stage.RENDER and self.lease_until is None and not self.is_terminal

    def renderer_wait_at(self, now: float) -> float:
        """All the time spent waiting for a renderer, the current wait included."""
        queued = self.stage_times.get(Stage.RENDER, StageTimes()).queued_at
        current = now - queued if self.waiting_for_renderer() and queued is not None else 0.0
        return self.renderer_wait_s + max(0.0, current)

    def status_detail(self) -> StatusDetail | None:
        """Why a job in render waits, or that it renders; None outside render."""
        if self.is_terminal or self.stage is not Stage.RENDER:
            return None
        return self.detail or StatusDetail.WAITING_FOR_RENDERER

    def deadline_at(self, now: float) -> float:
        """`deadline`, with the wait under way (not yet added to `renderer_wait_s`)."""
        return self.created_at + self.timeout_s + self.renderer_wait_at(now)


class TerminalDecision(Record):
    """The one terminal decision of a job, written once by put-if-absent."""

    status: JobStatus
    decided_at: float
    error: JobError | None = None
    outputs: list[OutputRef] = Field(default_factory=list)
    #: A completion's stage times: the last stage's record is not written again (the
    #: decision carries what that write would have), so reads take them from here.
    stage_times: dict[Stage, StageTimes] | None = None


class WebhookEventNote(Record):
    """A non-terminal webhook event in flight: it travels whole, it has no stored record."""

    msg_id: str
    type: str
    body: str  #: the exact bytes signed and sent on every attempt


class StageMessage(Record):
    """What travels on a stage queue: ids, and a webhook event's small body (Modal caps
    an item at 1 MiB)."""

    job_id: str
    stage: Stage
    epoch: int = 0
    #: Notify retries carry their attempt number; other stages leave it 0.
    attempt: int = 0
    not_before: float = 0.0
    #: On the notify queue: a non-terminal webhook event (None: the terminal delivery).
    event: WebhookEventNote | None = None
    #: A work-stage hand-off: the job record as the sender wrote it and (first hand-off)
    #: the request, when small, so the receiver need not read them back (issue 12).
    record: str | None = None
    request: str | None = None
    #: When the message was made (the sender's clock); 0 for messages without it.
    sent_at: float = 0.0


#: How one webhook attempt ended: delivered, to be retried, or given up (dead-lettered).
Outcome = Literal["delivered", "retry", "dead"]


class DeliveryAttempt(Record):
    """One attempt in a job's webhook delivery log (no URL, no secret, no body)."""

    attempt: int
    #: Unix seconds when the attempt started; also its signed `webhook-timestamp`.
    at: float
    status_code: int | None = None
    error: str | None = None
    duration_s: float
    outcome: Outcome
    next_attempt_at: float | None = None
    reason: str = ""
