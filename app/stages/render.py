"""Render: run the workflow on ComfyUI and stage its outputs for upload.

The graph is rewritten so everything of this job lives in per-job folders on the
ComfyUI side: inputs are uploaded into the subfolder `<job id>` and every
`filename_prefix` is put under `<job id>/<run token>-`. Only files ComfyUI reports in
that folder (or this run's previews) are collected; anything else is dropped with a log
line. Afterwards the job's folders and previews are removed whenever ComfyUI's folders
are on this machine (`comfyui_base_dir`, or what a loopback ComfyUI reports about itself;
see `app.adapters.comfy.job_files`), so nothing a job wrote outlives it.
"""

from __future__ import annotations

import ipaddress
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.adapters.comfy.client import ComfyClient
from app.adapters.comfy.file_policy import scope_prefixes
from app.adapters.comfy.job_files import (
    ComfyDirs,
    copy_output,
    dirs_from_server,
    owned_outputs,
    remove_later,
    wipe_job,
)
from app.adapters.comfy.messages import ComfyOutput
from app.adapters.comfy.previews import PreviewFrame, data_url
from app.adapters.comfy.tracker import RenderProgress
from app.adapters.comfy.workflow import bind_inputs
from app.core.errors import ComfyUnavailable, RendererStuck
from app.core.logs import get_logger
from app.core.models import Job, OutputRef, StatusDetail
from app.engine.deps import Deps
from app.engine.events import PREVIEW, PROGRESS, record_detail, record_event
from app.engine.scratch import SCRATCH_KEY_PREFIX, inputs_folder, outputs_folder
from app.engine.webhook_events import on_job_event
from app.store.parallel import both


def new_prompt_id() -> str:
    """A fresh ComfyUI prompt id; its first 8 characters are the run token of the files."""
    return str(uuid.uuid4())


def scope_outputs(graph: dict[str, Any], job_id: str, run_token: str) -> dict[str, Any]:
    """A copy of the graph whose saved files go under `<job_id>/<run_token>-` (pure).

    The run token differs on every attempt, so a retry never gets ComfyUI's cached answer
    naming files that the previous attempt's clean-up already removed.
    """
    return scope_prefixes(graph, job_id, run_token)  # literal or linked prefixes alike


class Heartbeat:
    """The render's one conversation with the store: cancel check and progress together.

    At most once per `progress_interval_s` (a setting, 2 s by default) it reads whether
    the job was cancelled and, if there is progress news, writes the record, both at
    once: at most one call per render-second by default. The progress news goes into
    the job's event log in that same write (`progress`, the newest preview frame at most
    once per `preview_interval_s`, `rendering` once ComfyUI runs a node of the job), so
    events cost no call of their own however many websocket messages come. The lease is
    not renewed here: the engine's heartbeat thread (`app.engine.heartbeat`) renews it for
    every stage, and one writer of the lease is enough. The first check waits a full interval: the
    pipeline read the job's terminal record just before the stage started.
    """

    def __init__(self, deps: Deps, job: Job) -> None:
        self.deps = deps
        self.job = job
        self.interval_s = deps.settings.progress_interval_s
        self.checked_at = deps.clock()
        self.pending: RenderProgress | None = None
        self.preview: PreviewFrame | None = None
        self.preview_at = float("-inf")
        self.cancelled = False

    def should_cancel(self) -> bool:
        self._tick()
        return self.cancelled

    def on_progress(self, progress: RenderProgress) -> None:
        self.pending = progress
        self._tick()

    def on_preview(self, frame: PreviewFrame) -> None:
        self.preview = frame  # only the newest is kept; it is encoded at the next write

    def flush(self) -> Job:
        """The job with the news not yet written (the hand-off's write carries it)."""
        update = self._update(self.deps.clock())
        if update is not None:
            self.job = update
        return self.job

    def _tick(self) -> None:
        now = self.deps.clock()
        if self.cancelled or now - self.checked_at < self.interval_s:
            return
        self.checked_at = now
        update = self._update(now)
        if update is not None:
            self.job = update
            on_job_event(self.deps, update, "job.progress", update.progress_detail)
        jobs = self.deps.jobs
        decided, _ = both(
            jobs.concurrent,
            lambda: jobs.terminal(self.job.id) is not None,
            lambda: None if update is None else jobs.save(update),
        )
        self.cancelled = decided

    def _update(self, now: float) -> Job | None:
        """The record to write now, or None when there is no progress news."""
        progress, job = self.pending, self.job
        preview = self._take_preview(now)
        if progress is None and preview is None:
            return None
        self.pending = None
        if progress is not None:
            detail = {
                "node_id": progress.node_id,
                "node_type": progress.node_type,
                "value": progress.value,
                "max": progress.max,
                "nodes_done": progress.nodes_done,
                "nodes_total": progress.nodes_total,
            }
            if progress.node_id is not None:  # a node of ours runs: no longer waiting
                job = record_detail(self.deps, job, StatusDetail.RENDERING)
            job = job.model_copy(update={"progress": progress.fraction, "progress_detail": detail})
            job = record_event(
                self.deps, job, PROGRESS, {**detail, "fraction": round(progress.fraction, 4)}
            )
        if preview is not None:
            job = record_event(self.deps, job, PREVIEW, preview)
        return job

    def _take_preview(self, now: float) -> dict[str, object] | None:
        """The newest preview frame as event data, at most once per `preview_interval_s`."""
        frame, settings = self.preview, self.deps.settings
        if frame is None or now - self.preview_at < settings.preview_interval_s:
            return None
        self.preview, self.preview_at = None, now
        url = data_url(frame, settings.preview_max_px, settings.preview_max_bytes)
        return None if url is None else {"node_id": frame.node_id, "url": url}


def _abandon(client: ComfyClient, prompt_id: str, cause: BaseException) -> None:
    try:
        client.delete_pending(prompt_id)
        client.interrupt(prompt_id)
    except Exception:  # noqa: BLE001 - best effort while the worker shuts down
        get_logger().warning("render_abandon_failed", cause=type(cause).__name__)


#: ComfyUI's folders per ComfyUI URL, once found (None: not on this machine).
_FOUND_DIRS: dict[str, ComfyDirs | None] = {}


def comfy_dirs(deps: Deps) -> ComfyDirs | None:
    """ComfyUI's folders on this machine: the setting, or what a loopback ComfyUI reports."""
    if deps.settings.comfyui_base_dir:
        return ComfyDirs.under(deps.settings.comfyui_base_dir)
    url = deps.comfy.base_url
    if url in _FOUND_DIRS:
        return _FOUND_DIRS[url]
    dirs: ComfyDirs | None = None
    if _is_loopback(url):
        try:
            system = deps.comfy.health().get("system")
            argv = system.get("argv") if isinstance(system, dict) else None
            folders = deps.comfy.folder_paths()
        except ComfyUnavailable:
            return None  # ask again next time
        if isinstance(argv, list):
            dirs = dirs_from_server([str(a) for a in argv], folders)
    if dirs is None:
        get_logger().warning("comfy_job_files_not_wiped", reason="ComfyUI folders not visible")
    _FOUND_DIRS[url] = dirs
    return dirs


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _written_by(client: ComfyClient, prompt_id: str, job_id: str, token: str) -> list[ComfyOutput]:
    """The files a prompt that did not finish wrote (its previews), as its history says."""
    try:
        entry = client.history(prompt_id, timeout_s=5.0)
    except Exception:  # noqa: BLE001 - the wipe is best effort; folders go regardless
        return []
    return owned_outputs(entry.outputs, job_id, token)[0] if entry is not None else []


def run(job: Job, deps: Deps) -> Job:
    """Render the job; raises RenderFailed, RenderTimeout, InvalidWorkflow, ComfyUnavailable."""
    if job.inputs:
        deps.scratch_reload()  # to see what fetch committed; a job without inputs has none
    client = deps.comfy
    log = get_logger(job_id=job.id, tenant_id=job.tenant_id, stage="render")
    heartbeat = Heartbeat(deps, job)
    written: list[ComfyOutput] | None = None  # None: the prompt did not finish
    prompt_id = new_prompt_id()
    token = prompt_id[:8]
    try:
        uploaded = {
            spec.name: client.upload_input(
                (inputs_folder(deps, job.id) / spec.name).read_bytes(), spec.name, job.id
            )
            for spec in job.inputs
        }
        graph = scope_outputs(bind_inputs(deps.jobs.workflow(job.id), uploaded), job.id, token)
        try:
            result = client.run(
                graph,
                prompt_id=prompt_id,
                deadline_s=job.deadline,
                should_cancel=heartbeat.should_cancel,
                on_progress=heartbeat.on_progress,
                progress_interval_s=deps.settings.progress_interval_s,
                on_preview=heartbeat.on_preview,
            )
        except RendererStuck as exc:
            # This job holds the shared renderer; the others on it are retried once it
            # is restarted (their prompts vanish: ComfyUnavailable, retryable).
            log.error("renderer_stuck", error=exc.message)
            deps.renderer_stuck(f"job {job.id}: {exc.message}")
            raise
        except BaseException as exc:
            # Not an error of the run but the worker being stopped (Modal's
            # InputCancellation, Ctrl-C): do not leave the prompt burning GPU behind us.
            if not isinstance(exc, Exception):
                _abandon(client, prompt_id, exc)
            raise
        written = owned_outputs(result.written or result.outputs, job.id, token)[0]
        owned, foreign = owned_outputs(result.outputs, job.id, token)
        for output in foreign:  # reported by ComfyUI, but not in this job's folder
            log.warning(
                "render_output_dropped",
                node_id=output.node_id,
                type=output.type,
                subfolder=output.subfolder,
                filename=output.filename,
            )
        folder = outputs_folder(deps, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        staged: list[OutputRef] = []
        here = comfy_dirs(deps)  # ComfyUI's folders, where they are on this machine
        for index, output in enumerate(owned):
            local_name = f"{index:02d}-{Path(output.filename).name}"
            dest = folder / local_name
            size = None if here is None else copy_output(here, output, job.id, dest)
            if size is None:
                size = client.download(output, dest)
            staged.append(
                OutputRef(
                    filename=Path(output.filename).name,
                    content_type="",
                    size=size,
                    key=f"{SCRATCH_KEY_PREFIX}{local_name}",
                )
            )
        log.info(
            "render_finished",
            outputs=len(staged),
            cached=result.cached,
            elapsed_s=round(result.elapsed_s, 3),
        )
    finally:
        dirs = comfy_dirs(deps)
        if dirs is not None:
            if written is None:
                written = _written_by(client, prompt_id, job.id, token)
            wipe_job(dirs, job.id, written, remove=remove_later)  # off the serial chain
    deps.scratch_commit()
    # The heartbeat's copy: it carries the events recorded during the render.
    return heartbeat.flush().model_copy(update={"outputs": staged, "progress": 1.0})
