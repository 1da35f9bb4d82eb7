"""Fetch: download each input with the SSRF-safe client (or copy it from its upload) and
check it is real media."""

from __future__ import annotations

from app.adapters.media import check_media
from app.core.errors import StageCancelled
from app.core.ids import inside
from app.core.logs import get_logger
from app.core.models import Job
from app.engine.cancel import cancel_checker
from app.engine.deps import Deps
from app.engine.scratch import inputs_folder
from app.engine.uploads import fetch_upload


def run(job: Job, deps: Deps) -> Job:
    """Place every input in the job's scratch folder; raises FetchFailed / UrlRefused."""
    settings = deps.settings
    folder = inputs_folder(deps, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    log = get_logger(job_id=job.id, tenant_id=job.tenant_id, stage="fetch")
    # Asked between chunks (throttled): a cancel stops a slow download at once, not at
    # its end. Between inputs the store is asked every time (one read per input).
    cancelled = cancel_checker(deps, job.id)
    for spec in job.inputs:
        if deps.jobs.terminal(job.id) is not None:
            raise StageCancelled("the job was cancelled while its inputs downloaded")
        dest = inside(folder, spec.name)
        if spec.upload_id is not None:
            size = fetch_upload(deps, job, spec, dest)
        else:
            size = deps.http.download(
                spec.url,
                dest,
                max_bytes=settings.fetch_max_bytes,
                timeout_s=settings.fetch_timeout_s,
                max_redirects=settings.fetch_max_redirects,
                should_cancel=cancelled,
            ).size
        info = check_media(
            dest,
            max_pixels=settings.max_image_pixels,
            max_frames=settings.max_frames,
            max_total_pixels=settings.max_total_pixels,
        )
        log.info("input_fetched", name=spec.name, size=size, content_type=info.content_type)
    deps.scratch_commit()
    return job
