"""Intake: validate a job request, admit it strictly, store it, enqueue fetch (or render).

Two ways in, one code path: the HTTP ingress calls `admit` directly (so it can answer 202
or 429 at once); a Python client puts an `IntakeMessage` on the intake queue, and the
engine (`process_intake_message`) authenticates its API key and calls `run`, which is
the same `admit`; the engine records a refusal. Everything that can
be checked before any GPU time is checked here: the workflow against ComfyUI's node
catalog (ComfyUI's own input rules included: `validation`), the URLs against the URL
policy, sizes and timeouts against the settings.
"""

from __future__ import annotations

import json

from app.adapters.comfy.catalog import NodeCatalog
from app.adapters.comfy.file_policy import check_file_names
from app.adapters.comfy.node_policy import NodePolicy, check_nodes
from app.adapters.comfy.validation import check_inputs
from app.adapters.comfy.workflow import check_workflow
from app.adapters.net.policy import UrlPolicy, parse_url
from app.adapters.webhooks.signing import check_event_names
from app.core.config import Settings
from app.core.errors import (
    AdmissionRejected,
    Backpressure,
    ComfyUnavailable,
    InvalidRequest,
    TemplatesOnly,
)
from app.core.ids import new_job_id
from app.core.logs import get_logger
from app.core.models import Job, Stage, TemplateRef
from app.core.schemas import USER_ID, JobRequest
from app.engine import metrics
from app.engine.deps import Deps
from app.engine.pipeline import Submission, hand_off
from app.engine.uploads import resolve_inputs
from app.store.jobs import Admission, NewJob, body_fingerprint
from app.store.tenants import Tenant


def node_catalog(deps: Deps) -> NodeCatalog | None:
    """ComfyUI's node catalog as the render side published it; None if unknown.

    Locally there is no render container to publish it, so intake asks ComfyUI once and
    publishes it for everyone (`deps.catalog_from_comfy`); if ComfyUI is down, only
    structural checks run (ComfyUI validates again before any work).
    """
    now = deps.clock()
    catalog = _published_catalog(deps, now)
    if catalog is not None or not deps.catalog_from_comfy:
        return catalog
    try:
        object_info = deps.comfy.object_info()
    except ComfyUnavailable:
        get_logger().warning("node_catalog_unavailable")
        return None
    return deps.catalog.publish(object_info, now)


def catalog_fetch_due(deps: Deps) -> bool:
    """Whether `node_catalog` would ask ComfyUI now (none published, or it aged out)."""
    return deps.catalog_from_comfy and _published_catalog(deps, deps.clock()) is None


def _published_catalog(deps: Deps, now: float) -> NodeCatalog | None:
    """The catalog published for everyone, if it is still valid at `now`."""
    return deps.catalog.load(deps.settings.object_info_ttl_s, now, deps.catalog_version)


def check_request(request: JobRequest, deps: Deps) -> None:
    """Everything about a request that can be refused before it costs anything."""
    settings = deps.settings
    if len(request.inputs) > settings.max_inputs:
        raise InvalidRequest(
            f"too many inputs: {len(request.inputs)} (limit {settings.max_inputs})"
        )
    if request.timeout_s is not None and request.timeout_s > settings.max_job_timeout_s:
        raise InvalidRequest(
            f"timeout_s {request.timeout_s} is over the limit of {settings.max_job_timeout_s}"
        )
    metadata_bytes = len(json.dumps(request.metadata))
    if metadata_bytes > 16 * 1024:
        raise InvalidRequest(f"metadata is {metadata_bytes} bytes (limit 16384)")
    policy = UrlPolicy.from_settings(settings)
    for item in request.inputs:
        if item.url is not None:
            parse_url(item.url, policy)  # raises UrlRefused naming the reason
    if request.webhook_url is not None:
        parse_url(request.webhook_url, policy)
    check_event_names(request.webhook_events, has_webhook=request.webhook_url is not None)
    names = [item.name for item in request.inputs]
    check_graph(request.workflow, node_catalog(deps), names, settings)


def check_graph(
    workflow: object, catalog: NodeCatalog | None, input_names: list[str], settings: Settings
) -> None:
    """Every check of a workflow at submit: shape, files, node policy, ComfyUI's input rules.

    Raises `InvalidWorkflow` (`InvalidNodes` for ComfyUI's rules: it names node and input).
    """
    graph = check_workflow(
        workflow,
        catalog,
        max_nodes=settings.max_workflow_nodes,
        max_bytes=settings.max_workflow_bytes,
    )
    check_file_names(graph, catalog, input_names)
    check_nodes(graph, NodePolicy.from_settings(settings), catalog)
    if catalog is not None:  # without one, ComfyUI's own validation decides at render
        check_inputs(graph, catalog)


def admit(
    deps: Deps,
    tenant: Tenant,
    user_id: str,
    request: JobRequest,
    *,
    idempotency_key: str | None = None,
    job_id: str | None = None,
    template: TemplateRef | None = None,
    fingerprint: str | None = None,
) -> Admission:
    """Check and admit a request (`template`: the one it was resolved from).

    `fingerprint` is the idempotency hash of what the client sent, when that is not
    `request` itself (a template run: a drawn seed must not make a retry look different).
    Raises InvalidRequest (and subclasses), AdmissionRejected or IdempotencyConflict.
    """
    if tenant.templates_only and template is None:
        raise TemplatesOnly()
    if not USER_ID.fullmatch(user_id):
        raise InvalidRequest("user id must match ^[A-Za-z0-9._:@-]{1,128}$")
    if request.user_id is not None and request.user_id != user_id:
        raise InvalidRequest("user_id in the body does not match X-User-ID")
    check_request(request, deps)
    # After every check, so a refused request stores no inline input.
    inputs = resolve_inputs(deps, tenant.id, user_id, request.inputs)
    new = NewJob(
        tenant_id=tenant.id,
        user_id=user_id,
        workflow=request.workflow,
        timeout_s=request.timeout_s or deps.settings.default_job_timeout_s,
        inputs=inputs,
        webhook_url=request.webhook_url,
        webhook_events=request.webhook_events,
        metadata=request.metadata,
        idempotency_key=idempotency_key,
        body_hash=fingerprint or body_fingerprint(request.model_dump(mode="json")),
        template=template,
        queue_position=_render_backlog(deps),
    )
    try:
        admission = deps.jobs.create(
            new,
            job_id or new_job_id(),
            tenant.limits(deps.settings),
            id_from_client=job_id is not None,
        )
    except AdmissionRejected as exc:
        metrics.ADMISSION_REFUSALS.labels(exc.code).inc()
        raise
    log = get_logger(job_id=admission.job.id, tenant_id=tenant.id, stage=Stage.INTAKE.value)
    if admission.replayed:
        log.info("job_replayed", idempotency_key=idempotency_key)
        return admission
    job = admission.job
    # Render (a job without inputs goes there at once) reads the request: it rides along.
    graph = admission.request if job.stage is Stage.RENDER else None
    if not hand_off(deps, job, job.stage, request=graph):
        retry = deps.settings.backpressure_retry_after_s
        raise Backpressure(f"the service is at capacity; retry after {retry} s", retry)
    log.info("job_admitted", user_id=user_id, inputs=len(new.inputs))
    return admission


def _render_backlog(deps: Deps) -> int | None:
    """The render queue's length from the backpressure check's reading: no call of its own."""
    seen = deps.backlog_seen.get(Stage.RENDER)
    return None if seen is None else seen[1]


def run(submission: Submission, deps: Deps) -> Job:
    """The intake stage: admit a queued request (raises as `admit` when it is refused)."""
    return admit(
        deps,
        submission.tenant,
        submission.user_id,
        submission.request,
        idempotency_key=submission.idempotency_key,
        job_id=submission.job_id,
    ).job
