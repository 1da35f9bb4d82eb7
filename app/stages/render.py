"""Render: run the workflow on ComfyUI and stage its outputs for upload.

The graph is rewritten so everything of this job lives in per-job folders on the
ComfyUI side: inputs are uploaded into the subfolder `<job id>` and every
`filename_prefix` is put under `<job id>/`. Those folders are removed afterwards when
this process can see ComfyUI's base folder (`comfyui_base_dir`), so no tenant ever sees
another's files in a warm container.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.adapters.comfy.client import ComfyClient
from app.adapters.comfy.file_policy import scope_prefixes
from app.adapters.comfy.tracker import RenderProgress
from app.adapters.comfy.workflow import bind_inputs
from app.core.logs import get_logger
from app.core.models import Job, OutputRef
from app.engine.cancel import cancel_checker
from app.engine.deps import Deps
from app.engine.scratch import OUTPUTS, SCRATCH_KEY_PREFIX, inputs_folder, outputs_folder


def scope_outputs(graph: dict[str, Any], job_id: str, run_token: str) -> dict[str, Any]:
    """A copy of the graph whose saved files go under `<job_id>/<run_token>-` (pure).

    The run token differs on every attempt, so a retry never gets ComfyUI's cached answer
    naming files that the previous attempt's clean-up already removed.
    """
    return scope_prefixes(graph, job_id, run_token)  # literal or linked prefixes alike


def progress_writer(deps: Deps, job: Job) -> Callable[[RenderProgress], None]:
    """Writes render progress to the job and renews its lease (the client throttles)."""
    holder = {"job": job}

    def write(progress: RenderProgress) -> None:
        current = holder["job"].model_copy(
            update={
                "progress": progress.fraction,
                "progress_detail": {
                    "node_id": progress.node_id,
                    "node_type": progress.node_type,
                    "value": progress.value,
                    "max": progress.max,
                    "nodes_done": progress.nodes_done,
                    "nodes_total": progress.nodes_total,
                },
                "lease_until": deps.clock() + deps.settings.stage_lease_s,
            }
        )
        holder["job"] = current
        deps.jobs.save(current)

    return write


def _abandon(client: ComfyClient, prompt_id: str, cause: BaseException) -> None:
    try:
        client.delete_pending(prompt_id)
        client.interrupt(prompt_id)
    except Exception:  # noqa: BLE001 - best effort while the worker shuts down
        get_logger().warning("render_abandon_failed", cause=type(cause).__name__)


def wipe_comfy_folders(base_dir: str, job_id: str) -> None:
    """Remove the job's input and output folders on the ComfyUI side."""
    if not base_dir:
        return
    for kind in ("input", "output", "temp"):
        shutil.rmtree(Path(base_dir) / kind / job_id, ignore_errors=True)


def run(job: Job, deps: Deps) -> Job:
    """Render the job; raises RenderFailed, RenderTimeout, InvalidWorkflow, ComfyUnavailable."""
    deps.scratch_reload()
    client = deps.comfy
    log = get_logger(job_id=job.id, tenant_id=job.tenant_id, stage="render")
    job = job.model_copy(update={"render_call_id": deps.current_call_id()})
    deps.jobs.save(job)
    try:
        uploaded = {
            spec.name: client.upload_input(
                (inputs_folder(deps, job.id) / spec.name).read_bytes(), spec.name, job.id
            )
            for spec in job.inputs
        }
        prompt_id = str(uuid.uuid4())
        graph = scope_outputs(
            bind_inputs(deps.jobs.workflow(job.id), uploaded), job.id, prompt_id[:8]
        )
        try:
            result = client.run(
                graph,
                prompt_id=prompt_id,
                deadline_s=job.deadline,
                should_cancel=cancel_checker(deps, job.id),
                on_progress=progress_writer(deps, job),
                progress_interval_s=deps.settings.progress_interval_s,
            )
        except BaseException as exc:
            # Not an error of the run but the worker being stopped (Modal's
            # InputCancellation, Ctrl-C): do not leave the prompt burning GPU behind us.
            if not isinstance(exc, Exception):
                _abandon(client, prompt_id, exc)
            raise
        folder = outputs_folder(deps, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        staged: list[OutputRef] = []
        for index, output in enumerate(result.outputs):
            local_name = f"{index:02d}-{Path(output.filename).name}"
            size = client.download(output, folder / local_name)
            staged.append(
                OutputRef(
                    filename=Path(output.filename).name,
                    content_type="",
                    size=size,
                    key=f"{SCRATCH_KEY_PREFIX}{OUTPUTS}/{local_name}",
                )
            )
        log.info(
            "render_finished",
            outputs=len(staged),
            cached=result.cached,
            elapsed_s=round(result.elapsed_s, 3),
        )
    finally:
        wipe_comfy_folders(deps.settings.comfyui_base_dir, job.id)
    deps.scratch_commit()
    return job.model_copy(update={"outputs": staged, "progress": 1.0})
