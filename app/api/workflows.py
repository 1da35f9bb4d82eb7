"""`/v1/workflows`: a tenant's workflow templates (register, read, list, move latest, delete).

Templates belong to the tenant (the API key), not to an end user, so these routes take
no `X-User-ID`. A template is run with `POST /v1/jobs {"workflow_id": ..., "inputs": ...}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from app.api.http_errors import error_doc
from app.api.ingress import DepsDep, TenantDep, raw_body
from app.api.submissions import parse_model
from app.core.templates import (
    TEMPLATE_NAME_PATTERN,
    WORKFLOW_ID_PATTERN,
    CompiledInput,
    Template,
    WorkflowCreate,
    json_schema,
    split_workflow_id,
)
from app.engine import templates
from app.engine.deps import Deps
from app.stages.intake import node_catalog
from app.store.tenants import Tenant

workflows_router = APIRouter()

_WorkflowId = Annotated[
    str, Path(pattern=WORKFLOW_ID_PATTERN, description="`name`, `name@latest` or `name@3`.")
]
_Name = Annotated[str, Path(pattern=TEMPLATE_NAME_PATTERN)]


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_doc("Missing, invalid or revoked API key."),
    404: error_doc("No such template or version for this tenant."),
    422: error_doc("A parameter or the body is not valid; `details` says which."),
    503: error_doc("The state backend (or the node catalog) is briefly unavailable."),
}


class TemplateView(BaseModel):
    """One template version: its inputs, their JSON Schema and the graph."""

    id: str = Field(description="`name@version`: pass as `workflow_id`.")
    name: str
    version: int
    latest_version: int | None
    description: str
    created_at: float
    inputs: dict[str, CompiledInput]
    input_schema: dict[str, Any] = Field(description="JSON Schema of a run's `inputs`.")
    workflow: dict[str, Any]


class TemplateSummary(BaseModel):
    name: str
    latest_version: int | None
    versions: list[int]
    description: str


class TemplateList(BaseModel):
    workflows: list[TemplateSummary]


class LatestMove(BaseModel):
    """`PUT /v1/workflows/{name}/latest`: point `latest` at an existing version."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)


class Deleted(BaseModel):
    deleted: list[str]


def _view(deps: Deps, template: Template) -> TemplateView:
    return TemplateView(
        id=template.id,
        name=template.name,
        version=template.version,
        latest_version=deps.templates.latest_version(template.tenant_id, template.name),
        description=template.description,
        created_at=template.created_at,
        inputs=template.inputs,
        input_schema=json_schema(template),
        workflow=template.workflow,
    )


@workflows_router.post(
    "/v1/workflows",
    status_code=201,
    tags=["workflows"],
    responses={
        400: error_doc("The graph or an input was refused; `problems` names node, field, input."),
        413: error_doc("The body is over the request size limit."),
        **_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/WorkflowCreate"}}
            },
        }
    },
)
def create_workflow(
    deps: DepsDep, tenant: TenantDep, body: Annotated[bytes, Depends(raw_body)]
) -> TemplateView:
    """Register a new immutable version of a named template (and move `latest` to it)."""
    request = parse_model(WorkflowCreate, body)
    template = templates.register(deps, tenant, request, node_catalog(deps))
    return _view(deps, template)


@workflows_router.get("/v1/workflows", tags=["workflows"], responses=_ERRORS)
def list_workflows(deps: DepsDep, tenant: TenantDep) -> TemplateList:
    """The tenant's templates, with their versions and where `latest` points."""
    found: list[TemplateSummary] = []
    for name in deps.templates.names(tenant.id):
        versions = deps.templates.versions(tenant.id, name)
        if versions:
            found.append(
                TemplateSummary(
                    name=name,
                    latest_version=deps.templates.latest_version(tenant.id, name),
                    versions=[t.version for t in versions],
                    description=versions[-1].description,
                )
            )
    return TemplateList(workflows=sorted(found, key=lambda s: s.name))


@workflows_router.get("/v1/workflows/{workflow_id}", tags=["workflows"], responses=_ERRORS)
def get_workflow(deps: DepsDep, tenant: TenantDep, workflow_id: _WorkflowId) -> TemplateView:
    """One version (`latest` when none is named), with the JSON Schema of its inputs."""
    return _view(deps, templates.find(deps, tenant, workflow_id))


@workflows_router.put("/v1/workflows/{name}/latest", tags=["workflows"], responses=_ERRORS)
def move_latest(
    deps: DepsDep, tenant: TenantDep, name: _Name, body: Annotated[bytes, Depends(raw_body)]
) -> TemplateView:
    """Point `latest` at an existing version (a rollback, or a release of an older push)."""
    move = parse_model(LatestMove, body)
    template = templates.find(deps, tenant, f"{name}@{move.version}")
    deps.templates.set_latest(tenant.id, name, template.version)
    return _view(deps, template)


@workflows_router.delete("/v1/workflows/{workflow_id}", tags=["workflows"], responses=_ERRORS)
def delete_workflow(deps: DepsDep, tenant: TenantDep, workflow_id: _WorkflowId) -> Deleted:
    """Delete one version (`name@3`) or every version (`name`).

    Jobs already made from it are not affected: each stores its resolved graph.
    """
    return Deleted(deleted=_delete(deps, tenant, workflow_id))


def _delete(deps: Deps, tenant: Tenant, workflow_id: str) -> list[str]:
    name, version = split_workflow_id(workflow_id)
    if version is None and workflow_id.endswith("@latest"):
        version = templates.find(deps, tenant, workflow_id).version
    if version is not None:
        template = templates.find(deps, tenant, f"{name}@{version}")
        deps.templates.delete(tenant.id, name, version)
        return [template.id]
    ids = [t.id for t in deps.templates.versions(tenant.id, name)]
    if not ids:
        templates.find(deps, tenant, name)  # raises the 404
    deps.templates.delete_all(tenant.id, name)
    return ids
