"""Upload: put the staged outputs into object storage under tenant/user/job keys.

A job that ends while its outputs go up (a cancel) keeps nothing: upload checks between
outputs, deletes what it (or an earlier attempt) already stored, and stops.
"""

from __future__ import annotations

from app.adapters.media import sniff_content_type
from app.adapters.storage.base import output_key
from app.core.errors import PipelineError, StageCancelled, UploadFailed
from app.core.logs import get_logger
from app.core.models import Job, OutputRef
from app.engine.cancel import cancel_checker
from app.engine.deps import Deps
from app.engine.pipeline import discard_unless_completed
from app.engine.scratch import SCRATCH_KEY_PREFIX, job_folder

_FALLBACK_TYPE = "application/octet-stream"


def run(job: Job, deps: Deps) -> Job:
    """Store each staged output; the keys are deterministic, so a retry overwrites."""
    deps.scratch_reload()
    stored: list[OutputRef] = []
    try:
        # No last cancel read here: the engine's `complete` is put-if-absent, so a cancel
        # that lands now wins it, and the engine then discards what was stored.
        _store_all(job, deps, stored)
    except PipelineError as exc:
        decision = deps.jobs.terminal(job.id)
        if decision is None:
            raise  # a real storage error: the engine retries or fails the job
        # Ended under us (its end also removed the scratch folder we read from).
        discard_unless_completed(deps, decision, stored)
        raise StageCancelled("the job ended while its outputs were stored") from exc
    return job.model_copy(update={"outputs": stored})


def _store_all(job: Job, deps: Deps, stored: list[OutputRef]) -> None:
    folder = job_folder(deps, job.id)
    cancelled = cancel_checker(deps, job.id)
    log = get_logger(job_id=job.id, tenant_id=job.tenant_id, stage="upload")
    for index, output in enumerate(job.outputs):
        if not output.key.startswith(SCRATCH_KEY_PREFIX):
            stored.append(output)  # stored by an earlier attempt
            continue
        if cancelled():
            raise StageCancelled("the job ended while its outputs were stored")
        path = folder / output.key.removeprefix(SCRATCH_KEY_PREFIX)
        if not path.is_file():
            raise UploadFailed(f"output {output.filename} is missing from the scratch folder")
        with path.open("rb") as handle:
            content_type = sniff_content_type(handle.read(64)) or _FALLBACK_TYPE
        key = output_key(job.tenant_id, job.user_id, job.id, index, output.filename)
        size = deps.objects.put_file(key, path, content_type)
        stored.append(
            OutputRef(filename=output.filename, content_type=content_type, size=size, key=key)
        )
        log.info("output_stored", filename=output.filename, size=size, content_type=content_type)
