"""The one settings object, read from `COMFYUI_SAAS_*` environment variables.

Every field here is listed in `.env.example` with exactly this default (a test checks
that). Defaults are deliberately conservative: one render worker, small container caps,
no plain-http fetching, no private addresses. Nothing outside this module reads
`os.environ`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.node_policy import DENIED_BY_DEFAULT

ENV_PREFIX = "COMFYUI_SAAS_"


def _split_csv(cls: object, value: object) -> object:
    """Let list settings be written as `a,b,c` in the environment."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvStrList = Annotated[list[str], NoDecode]
CsvIntList = Annotated[list[int], NoDecode]


class Settings(BaseSettings):
    """Process-wide configuration; build it once and pass it down."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # --- backend and local data ----------------------------------------------------------
    backend: Literal["local", "modal"] = "local"
    data_dir: Path = Path(".comfyui-saas")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    #: Modal names: the app, and the prefix of its queues, dicts and volumes.
    modal_app_name: str = "comfyui-saas"
    #: Modal environment for queues and dicts; empty means the profile's default.
    modal_environment: str = ""

    # --- admission: per-tenant defaults, each tenant may override ----------------------
    max_active_jobs_per_user: int = Field(default=5, ge=1)
    #: 0 means no tenant-wide cap beyond the per-user one.
    max_active_jobs_per_tenant: int = Field(default=0, ge=0)
    #: Fixed one-minute window; 0 disables the rate limit.
    rate_limit_per_minute: int = Field(default=0, ge=0)
    #: What a 429 for a concurrency cap suggests as Retry-After.
    cap_retry_after_s: int = Field(default=5, ge=1)
    #: At most 6 days: an idempotency record is written once and must outlive its window
    #: without being touched again, and Modal Dict entries expire after 7 idle days.
    idempotency_ttl_s: int = Field(default=86_400, ge=60, le=6 * 86_400)
    #: Backpressure: admission (POST /v1/jobs, the Python client) answers 503 + Retry-After
    #: before any slot is taken when the render queue holds more than this many jobs ...
    max_render_backlog: int = Field(default=1000, ge=1)
    #: ... or any stage queue holds more than this (a Modal partition takes 5,000 items).
    queue_high_water_items: int = Field(default=4000, ge=1, le=5000)
    #: How long a queue-length reading is reused by the backpressure check (each is a
    #: round trip on Modal); 0 reads the queues on every admission.
    backpressure_check_interval_s: float = Field(default=2.0, ge=0, le=30)
    #: The Retry-After of a backpressure 503.
    backpressure_retry_after_s: int = Field(default=30, ge=1)
    #: A put on a full queue waits this long, then fails with QueueFull (never forever).
    queue_put_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: On Modal, how long a container may reuse an API key's lookup: a revoked key or a
    #: disabled tenant is refused everywhere within this bound (locally: at once).
    auth_cache_ttl_s: float = Field(default=30.0, ge=0, le=60)

    # --- request limits ----------------------------------------------------------------
    #: Room for a workflow plus the inline base64 inputs (2 MiB decoded is 2.7 MiB as
    #: base64); `POST /v1/uploads` has its own limit, upload_max_bytes.
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_workflow_bytes: int = Field(default=512 * 1024, ge=256)
    max_workflow_nodes: int = Field(default=500, ge=1)
    max_inputs: int = Field(default=16, ge=0)
    #: Requests one `POST /v1/jobs/batch` may carry (each is admitted on its own).
    max_batch_jobs: int = Field(default=20, ge=1, le=1000)
    #: Named inputs one workflow template may declare.
    max_template_inputs: int = Field(default=64, ge=1)
    default_job_timeout_s: int = Field(default=600, ge=1)
    max_job_timeout_s: int = Field(default=3600, ge=1)

    # --- fetch: the SSRF-safe client used for inputs and webhooks -----------------------
    fetch_allow_http: bool = False
    fetch_allowed_ports: CsvIntList = Field(default_factory=lambda: [80, 443])
    #: CIDRs that are allowed even though they are private/loopback (tests, on-prem).
    fetch_allow_cidrs: CsvStrList = Field(default_factory=list)
    fetch_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    fetch_timeout_s: float = Field(default=30.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0)
    #: Largest frame or page of an image input, in pixels.
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    #: Pixels of all frames or pages of one image input together (ComfyUI decodes every
    #: frame of a GIF, APNG or WebP into memory): by default one full-size image's worth.
    max_total_pixels: int = Field(default=40_000_000, ge=1)
    #: Frames or pages one image input may have.
    max_frames: int = Field(default=300, ge=1)

    # --- inputs without a public URL: uploads and inline base64 -------------------------
    #: Largest file `POST /v1/uploads` takes (raw body or multipart), and the largest a
    #: presigned PUT may declare (S3 storage).
    upload_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    #: How long an upload can be named in jobs; cleanup then removes it. At most 6 days
    #: (Modal Dict entries expire after 7 idle days).
    upload_ttl_s: int = Field(default=86_400, ge=60, le=6 * 86_400)
    #: Decoded bytes of all inline base64 inputs (`{"name", "data"}`) of one job together.
    inline_input_max_bytes: int = Field(default=2 * 1024 * 1024, ge=0)

    # --- render: the ComfyUI server ----------------------------------------------------
    comfyui_url: str = "http://127.0.0.1:8188"
    #: ComfyUI's base folder, when this process can see it; per-job input/output
    #: folders under it are wiped after each job. Empty: not visible, nothing to wipe.
    comfyui_base_dir: str = ""
    comfyui_connect_timeout_s: float = Field(default=10.0, gt=0)
    #: After a cancel or a deadline, how long ComfyUI may take to honour the interrupt
    #: (it interrupts only between nodes) before the job fails `renderer_stuck` and the
    #: renderer is restarted (docs/security.md, "Renderer watchdog").
    render_interrupt_grace_s: float = Field(default=15.0, gt=0)
    #: `dev` only: the command that starts ComfyUI. Set, `dev` runs ComfyUI as its own
    #: child and restarts it when a render worker reports it stuck or when it stops
    #: answering /system_stats for comfyui_unhealthy_s. Empty: ComfyUI is not ours.
    comfyui_cmd: str = ""
    #: A managed ComfyUI that answers no health check for this long is restarted.
    comfyui_unhealthy_s: float = Field(default=30.0, gt=0)
    #: The render checks for a cancel and writes progress (one read and at most one
    #: write) at most this often: each is a round trip on Modal.
    progress_interval_s: float = Field(default=2.0, gt=0)
    object_info_ttl_s: int = Field(default=3600, ge=1)
    #: How long a job may wait for a renderer (queued behind others, ComfyUI down or
    #: restarting) before it fails with `queue_wait_timeout`. That wait does not count
    #: against the job's own timeout, which bounds its work.
    render_queue_wait_limit_s: int = Field(default=1800, ge=1)

    # --- job events: `GET /v1/jobs/{id}/events` (docs/events.md) ------------------------
    #: How often an open event stream reads the job's record (one store read each).
    events_poll_interval_s: float = Field(default=1.0, gt=0)
    #: Open event streams per tenant, counted across ingress processes; 429 beyond.
    events_max_streams_per_tenant: int = Field(default=20, ge=1)
    #: A stream's place is leased for this long and renewed while it runs, so one whose
    #: process died frees its place within two leases.
    events_stream_lease_s: int = Field(default=60, ge=5)
    #: Longest an event stream stays open (the client reconnects with Last-Event-ID).
    events_stream_max_s: int = Field(default=3600, ge=1)
    #: Progress and preview events kept in a job's log (the newest; others are kept all).
    events_max_progress: int = Field(default=50, ge=1)
    #: At most one preview frame per this many seconds is recorded, downscaled to
    #: `preview_max_px` and dropped if still over `preview_max_bytes`.
    preview_interval_s: float = Field(default=2.0, gt=0)
    preview_max_px: int = Field(default=256, ge=16)
    preview_max_bytes: int = Field(default=24 * 1024, ge=1024)

    # --- node policy: which node classes a tenant's workflow may use --------------------
    #: Refused at submit (nodes that read folders or arbitrary host paths, write outside
    #: the job's outputs, or run caller code ComfyUI cannot interrupt; see docs/security.md).
    node_denylist: CsvStrList = Field(default_factory=lambda: list(DENIED_BY_DEFAULT))
    #: The operator's override: these classes are allowed even if node_denylist names them.
    node_allowlist: CsvStrList = Field(default_factory=list)
    #: Allow only the classes in node_allowlist (for deployments with custom nodes).
    node_allowlist_only: bool = False
    #: ComfyUI's API nodes call paid third-party services with the server's account.
    allow_api_nodes: bool = False

    # --- stages and workers ------------------------------------------------------------
    #: How long a stage holds a job without a heartbeat before fail_stale takes it back;
    #: the holder renews it every stage_lease_renew_s while it works (a long render too).
    stage_lease_s: int = Field(default=30, ge=10)
    stage_lease_renew_s: float = Field(default=10.0, gt=0)
    stage_max_attempts: int = Field(default=3, ge=1)
    #: A queued message older than this is presumed lost and re-sent even while its queue
    #: has a backlog (an empty queue re-sends after 5 minutes; a duplicate is fenced).
    requeue_under_backlog_after_s: int = Field(default=1800, ge=300)
    queue_poll_timeout_s: float = Field(default=1.0, gt=0)
    local_fetch_workers: int = Field(default=2, ge=1)
    local_render_workers: int = Field(default=1, ge=1)
    #: Jobs one local render worker holds at once, so the next prompt already waits in
    #: ComfyUI's queue while one runs (ComfyUI runs them in order). They share the
    #: worker's one websocket and HTTP pool; 1 = one job at a time (docs/comfyui.md).
    local_render_depth: int = Field(default=2, ge=1, le=16)
    local_upload_workers: int = Field(default=1, ge=1)
    local_notify_workers: int = Field(default=1, ge=1)
    local_intake_workers: int = Field(default=1, ge=1)
    #: How `dev` runs the stage workers: one process each, or all as threads of one
    #: engine process (same stage code and durable queues; less memory and start-up).
    local_engine: Literal["processes", "threads"] = "processes"
    #: Processes serving the HTTP port of `dev` (one listening socket, shared): the
    #: main process's ingress thread and this many minus one ingress children.
    local_ingress_workers: int = Field(default=2, ge=1)
    #: On SIGINT/SIGTERM of `dev`, how long workers may finish the message in hand before
    #: they are killed (the job they held is handed back to its stage on the next start).
    shutdown_grace_s: float = Field(default=20.0, ge=0)

    # --- storage -----------------------------------------------------------------------
    storage: Literal["local", "s3"] = "local"
    s3_endpoint_url: str = ""
    s3_bucket: str = "comfyui-saas"
    s3_region: str = "auto"
    s3_access_key_id: SecretStr = SecretStr("")
    s3_secret_access_key: SecretStr = SecretStr("")
    presign_expiry_s: int = Field(default=900, ge=1, le=7 * 86_400)
    upload_max_attempts: int = Field(default=4, ge=1)
    #: Attempts of a stage that meets a transient storage error (full disk, permissions,
    #: I/O error, S3 5xx/throttling) before the job fails; with the stage back-off of
    #: 2 s doubling, 6 attempts ride out about a minute of storage trouble.
    storage_retry_attempts: int = Field(default=6, ge=1)
    #: HMAC key for the local store's signed URLs; empty: one is generated and kept
    #: in the data folder.
    signing_key: SecretStr = SecretStr("")
    output_retention_s: int = Field(default=7 * 86_400, ge=60)

    # --- webhooks ----------------------------------------------------------------------
    webhook_timeout_s: float = Field(default=15.0, gt=0)
    #: Delay before each retry, as Standard Webhooks suggests: immediately, then 5 s,
    #: 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts over ~27.5 h), each spread by
    #: +-10% jitter. Retries are parked messages, so they survive restarts.
    webhook_retry_schedule_s: CsvIntList = Field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 36000]
    )
    #: Opt-in `job.progress` webhooks: at most one per job in this many seconds.
    webhook_progress_interval_s: float = Field(default=5.0, ge=0)

    # --- ingress and the command line's client ----------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    #: Where the ingress is reachable from clients (signed local URLs point here).
    public_url: str = "http://127.0.0.1:8000"
    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr = SecretStr("")

    # --- modal deployment: read at `modal deploy` time -----------------------------------
    #: Cost profiles; the defaults below are the off-peak one (scale to zero, one GPU,
    #: short idle). For a peak period set these in the deploying shell and redeploy:
    #:   COMFYUI_SAAS_MODAL_GPU=L40S
    #:   COMFYUI_SAAS_MODAL_RENDER_MAX_CONTAINERS=4
    #:   COMFYUI_SAAS_MODAL_RENDER_BUFFER_CONTAINERS=1
    #:   COMFYUI_SAAS_MODAL_RENDER_SCALEDOWN_WINDOW_S=300
    #:   COMFYUI_SAAS_MODAL_CPU_MAX_CONTAINERS=4
    #:   COMFYUI_SAAS_MODAL_INGRESS_MAX_CONTAINERS=4
    #: GPU type of the render containers (Modal's names: L4, A10G, L40S, A100-40GB, H100).
    modal_gpu: str = "L4"
    #: Containers kept up while idle; anything above 0 bills GPU time around the clock.
    modal_render_min_containers: int = Field(default=0, ge=0)
    modal_render_max_containers: int = Field(default=1, ge=1)
    #: Idle containers held in reserve under load (each one is a billed GPU).
    modal_render_buffer_containers: int = Field(default=0, ge=0)
    modal_render_scaledown_window_s: int = Field(default=60, ge=2, le=3600)
    #: Jobs one render container runs at once; ComfyUI runs one prompt at a time.
    modal_render_max_inputs: int = Field(default=1, ge=1)
    modal_render_timeout_s: int = Field(default=3600, ge=60, le=86_400)
    #: ComfyUI's start (and the memory snapshot) must finish within this.
    #: Bounded (and small) because every retried start of a broken image is billed GPU time.
    modal_render_startup_timeout_s: int = Field(default=300, ge=30, le=900)
    modal_render_retries: int = Field(default=1, ge=0, le=3)
    #: Circuit breaker: this many render container start-up failures within the window
    #: stop every wake-up of render for the cool-down (`render_circuit_open` in the log,
    #: `render_circuit: "open"` in /health).
    modal_render_breaker_failures: int = Field(default=3, ge=1)
    modal_render_breaker_window_s: int = Field(default=900, ge=60)
    modal_render_breaker_cooldown_s: int = Field(default=900, ge=60)
    #: Start ComfyUI once, snapshot the container's memory, restore it on cold starts.
    modal_memory_snapshot: bool = True
    #: Modal's alpha GPU snapshots (needs the memory snapshot); a failed restore just
    #: starts the container again without a snapshot.
    modal_gpu_snapshot: bool = False
    #: The CPU stages (intake, fetch, upload, notify) and the scheduled functions.
    modal_cpu_max_containers: int = Field(default=2, ge=1)
    modal_cpu_max_inputs: int = Field(default=8, ge=1)
    modal_cpu_scaledown_window_s: int = Field(default=30, ge=2, le=3600)
    modal_cpu_timeout_s: int = Field(default=600, ge=10, le=86_400)
    modal_cpu_retries: int = Field(default=2, ge=0, le=10)
    #: The HTTP API (scales to zero; one container serves many requests).
    modal_ingress_max_containers: int = Field(default=2, ge=1)
    modal_ingress_max_inputs: int = Field(default=32, ge=1)
    modal_ingress_scaledown_window_s: int = Field(default=60, ge=2, le=3600)
    #: Also require Modal proxy-auth headers (Modal-Key/Modal-Secret) on the API.
    modal_requires_proxy_auth: bool = False
    #: A proxy-auth token our own HTTP clients (client, smoke, CLI) send as Modal-Key /
    #: Modal-Secret; empty: none sent. Never logged.
    modal_proxy_key: str = ""
    modal_proxy_secret: SecretStr = SecretStr("")
    #: Messages one CPU-stage call takes before it hands over to a fresh call.
    modal_drain_max_items: int = Field(default=100, ge=1)
    #: The worst-case time of one message: a drain takes no new message once less than
    #: this is left before the function's timeout (a fresh call takes the rest).
    modal_drain_message_budget_s: int = Field(default=120, ge=1)
    #: How often `refresh_durable` touches every durable record (tenants, keys, names):
    #: at most 3 days, so even two missed runs stay inside Modal Dict's 7-day idle expiry.
    modal_durable_refresh_every_s: int = Field(default=86_400, ge=3600, le=3 * 86_400)
    #: How long a scratch Volume reload/commit waits for sibling inputs to close their
    #: files before it is tried anyway (and retried as a transient error if it fails).
    modal_scratch_gate_wait_s: float = Field(default=60.0, gt=0)
    #: With the 30 s lease, a job whose holder died is handed back within 45 s (a minute
    #: with the consumer's start); a delivery lost mid-POST within webhook_timeout_s +
    #: stage_lease_s + this. Modal's Period takes seconds (any float).
    modal_fail_stale_every_s: int = Field(default=15, ge=10)
    #: Cron strings are UTC. Cleanup runs hourly: at 2,000 daily users a day's ended jobs
    #: (~10,000, ~30 round trips each) cannot be purged within one run's timeout, an
    #: hour's can (see `cleanup_max_jobs_per_run` and docs/benchmarks.md, the month).
    modal_cleanup_cron: str = "17 * * * *"
    modal_verify_setup_cron: str = "23 4 * * *"
    #: Modal Secret with the S3/R2 keys (COMFYUI_SAAS_S3_ENDPOINT_URL, ..._ACCESS_KEY_ID,
    #: ..._SECRET_ACCESS_KEY).
    modal_storage_secret: str = "comfyui-saas-r2"
    #: Modal Secret with COMFYUI_SAAS_SIGNING_KEY.
    modal_signing_secret: str = "comfyui-saas-signing"
    #: Modal Secret with HF_TOKEN for gated models; empty: public models only.
    modal_hf_secret: str = ""

    # --- maintenance -------------------------------------------------------------------
    job_retention_s: int = Field(default=7 * 86_400, ge=60)
    #: Most jobs one cleanup run purges (~30 round trips of ~25 ms each on Modal: 500
    #: take ~6 minutes, inside the 10-minute function timeout); the rest wait for the
    #: next run. Hourly runs purge up to 12,000 jobs a day.
    cleanup_max_jobs_per_run: int = Field(default=500, ge=1)

    _split_lists = field_validator(
        "fetch_allowed_ports",
        "fetch_allow_cidrs",
        "webhook_retry_schedule_s",
        "node_denylist",
        "node_allowlist",
        mode="before",
    )(_split_csv)

    @model_validator(mode="after")
    def _renew_within_lease(self) -> Settings:
        if self.stage_lease_renew_s >= self.stage_lease_s:
            raise ValueError("stage_lease_renew_s must be shorter than stage_lease_s")
        return self

    @property
    def state_db_path(self) -> Path:
        """SQLite file of the local backend's queues and dicts."""
        return self.data_dir / "state.sqlite3"

    @property
    def work_dir(self) -> Path:
        """Per-job scratch folders shared by fetch, render and upload."""
        return self.data_dir / "work"

    @property
    def local_store_dir(self) -> Path:
        """The local object store's root folder."""
        return self.data_dir / "outputs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()


def env_value(value: object) -> str:
    """How a setting's value is written in the environment (and in `.env.example`)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
