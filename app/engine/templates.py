"""Workflow templates as the API uses them: register a version, find one, prepare a run.

Registering compiles the template against the node catalog (it must be known: bounds
and allowed values come from it). A run resolves the caller's values into the graph and
becomes an ordinary `JobRequest` plus a `TemplateRef`, so admission, storage and render
treat it like any job and the stored graph never depends on the template again.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.adapters.comfy.catalog import NodeCatalog
from app.adapters.comfy.node_policy import NodePolicy
from app.adapters.comfy.templates import compile_template, resolve
from app.adapters.net.policy import UrlPolicy, parse_url
from app.core.errors import (
    ComfyUnavailable,
    InvalidInput,
    Problem,
    TemplateNotFound,
    UrlRefused,
)
from app.core.models import TemplateRef
from app.core.schemas import InputField, JobRequest
from app.core.templates import (
    MEDIA_TYPES,
    Template,
    TemplateJobRequest,
    WorkflowCreate,
    split_workflow_id,
)
from app.engine.deps import Deps
from app.store.tenants import Tenant


def register(
    deps: Deps, tenant: Tenant, body: WorkflowCreate, catalog: NodeCatalog | None
) -> Template:
    """Check `body` against the catalog and policies and store it as a new version."""
    if catalog is None:
        raise ComfyUnavailable(
            "the node catalog is not known yet (ComfyUI has not published it); "
            "registering a template needs it, try again shortly"
        )
    settings = deps.settings
    graph, inputs = compile_template(
        body.workflow,
        body.inputs,
        catalog,
        NodePolicy.from_settings(settings),
        max_nodes=settings.max_workflow_nodes,
        max_bytes=settings.max_workflow_bytes,
        max_inputs=settings.max_template_inputs,
    )
    store = deps.templates
    template = Template(
        tenant_id=tenant.id,
        name=body.name,
        version=store.next_version(tenant.id, body.name),
        description=body.description,
        workflow=graph,
        inputs=inputs,
        created_at=deps.clock(),
    )
    store.add(template, make_latest=body.make_latest)
    return template


def find(deps: Deps, tenant: Tenant, workflow_id: str) -> Template:
    """The version `workflow_id` names (`name`, `name@latest`, `name@3`); 404 otherwise."""
    name, version = split_workflow_id(workflow_id)
    template = deps.templates.get(tenant.id, name, version)
    if template is None:
        raise TemplateNotFound(f"no workflow template {workflow_id!r}")
    return template


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A template run as intake takes it: the resolved request and where it came from."""

    request: JobRequest
    template: TemplateRef


def prepare_run(deps: Deps, tenant: Tenant, run: TemplateJobRequest) -> PreparedRun:
    """Resolve a run's values into its template's graph; raises InvalidInput by name."""
    template = find(deps, tenant, run.workflow_id)
    resolved = resolve(template, run.inputs)
    policy = UrlPolicy.from_settings(deps.settings)
    problems: list[Problem] = []
    for name, value in resolved.values.items():
        if template.inputs[name].type in MEDIA_TYPES and "url" in value:
            try:
                parse_url(value["url"], policy)
            except UrlRefused as exc:
                problems.append(Problem(exc.message, input=name))
    if problems:
        raise InvalidInput(problems)
    request = JobRequest(
        workflow=resolved.graph,
        inputs=[InputField(name=file_name, **source) for file_name, source in resolved.media],
        webhook_url=run.webhook_url,
        webhook_events=run.webhook_events,
        user_id=run.user_id,
        metadata=run.metadata,
        timeout_s=run.timeout_s,
    )
    ref = TemplateRef(
        id=template.id, name=template.name, version=template.version, inputs=resolved.values
    )
    return PreparedRun(request=request, template=ref)
