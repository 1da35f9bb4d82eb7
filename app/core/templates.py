"""Workflow templates: what a client registers, what is stored, what a run sends (pure).

A template is an API-format graph plus named, typed inputs; each input sets one or more
`(node id, input field)` places of the graph. Registering compiles the inputs against the
node catalog (`app.adapters.comfy.templates`): the stored `CompiledInput` carries the
bounds and allowed values in force, so a run is checked without the catalog, and
`json_schema` turns them into the JSON Schema frontends build forms from.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.models import Record
from app.core.schemas import UPLOAD_ID_PATTERN

TEMPLATE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
TEMPLATE_NAME = re.compile(TEMPLATE_NAME_PATTERN)
#: `portrait`, `portrait@latest` or `portrait@3`.
WORKFLOW_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}(@(latest|[1-9][0-9]{0,8}))?$"
WORKFLOW_ID = re.compile(WORKFLOW_ID_PATTERN)
INPUT_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
LATEST = "latest"

InputType = Literal[
    "string",
    "integer",
    "number",
    "boolean",
    "enum",
    "seed",
    "image",
    "video",
    "audio",
    "file",
    "model",
]
MEDIA_TYPES = frozenset({"image", "video", "audio", "file"})
#: Where a media input's file comes from: the fields of an InputField besides its name.
MEDIA_SOURCES = ("url", "upload_id", "data")
#: A seed input's value that asks the server to draw one.
RANDOM = "random"
#: Longest string input when the template sets no `max_length`.
DEFAULT_MAX_STRING = 10_000
MAX_PLACES = 16


class Place(BaseModel):
    """One place an input sets: a node of the graph and one of its input fields."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1, max_length=64, description="Node id in the graph.")
    field: str = Field(min_length=1, max_length=128, description="Input field of that node.")

    @model_validator(mode="before")
    @classmethod
    def _pair(cls, value: Any) -> Any:
        """`["3", "seed"]` is accepted for `{"node": "3", "field": "seed"}`."""
        if isinstance(value, list | tuple) and len(value) == 2:
            return {"node": value[0], "field": value[1]}
        return value


class InputDef(BaseModel):
    """A named input as the template author declares it."""

    model_config = ConfigDict(extra="forbid")

    type: InputType
    places: list[Place] = Field(min_length=1, max_length=MAX_PLACES)
    default: Any = None
    #: Without a default, a required input must be sent; an optional one keeps the graph's.
    required: bool | None = None
    minimum: int | float | None = Field(default=None, description="integer, number, seed only.")
    maximum: int | float | None = Field(default=None, description="integer, number, seed only.")
    choices: list[str] | None = Field(
        default=None, max_length=1000, description="enum and model only: a subset."
    )
    max_length: int | None = Field(default=None, ge=1, le=1_000_000, description="string only.")
    description: str = Field(default="", max_length=2000)


class WorkflowCreate(BaseModel):
    """`POST /v1/workflows`: register a new version of a named template."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TEMPLATE_NAME_PATTERN, description="Lowercase name, e.g. portrait.")
    workflow: dict[str, Any] = Field(description="ComfyUI API-format graph.")
    inputs: dict[str, InputDef] = Field(default_factory=dict)
    description: str = Field(default="", max_length=2000)
    #: Move the `latest` alias to this version (default); false keeps it where it is.
    make_latest: bool = True

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, value: dict[str, InputDef]) -> dict[str, InputDef]:
        for name in value:
            if not INPUT_KEY.fullmatch(name):
                raise ValueError(
                    f"input name {name!r} must be 1-64 letters, digits or '_', "
                    "starting with a letter"
                )
        return value


class CompiledInput(Record):
    """An input as stored: its places and the bounds in force (catalog's, narrowed)."""

    type: InputType
    places: list[tuple[str, str]]
    required: bool
    default: Any = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: list[str] | None = None
    max_length: int | None = None
    description: str = ""


class Template(Record):
    """One immutable version of a tenant's template."""

    tenant_id: str
    name: str
    version: int
    description: str = ""
    workflow: dict[str, Any]
    inputs: dict[str, CompiledInput]
    created_at: float

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"


class TemplateJobRequest(BaseModel):
    """`POST /v1/jobs` with a template: its id and the values of its named inputs."""

    model_config = ConfigDict(extra="forbid")

    workflow_id: str = Field(
        pattern=WORKFLOW_ID_PATTERN,
        description="`name`, `name@latest` or `name@<version>`.",
        examples=["portrait@3"],
    )
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description='Values by input name; media as {"url": "https://..."}, '
        '{"upload_id": "upl_..."} (from POST /v1/uploads) or {"data": "<base64>"}.',
    )
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_events: list[str] = Field(
        default_factory=list, max_length=8, description="As in a job request."
    )
    user_id: str | None = Field(default=None, description="Must equal X-User-ID if given.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Echoed back as is.")
    timeout_s: int | None = Field(default=None, ge=1)


def split_workflow_id(workflow_id: str) -> tuple[str, int | None]:
    """`("portrait", 3)` for `portrait@3`; version None for `portrait` and `@latest`."""
    name, _, version = workflow_id.partition("@")
    return name, None if version in ("", LATEST) else int(version)


def _number_schema(kind: str, spec: CompiledInput) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind}
    if spec.minimum is not None:
        schema["minimum"] = _plain(spec.minimum, kind)
    if spec.maximum is not None:
        schema["maximum"] = _plain(spec.maximum, kind)
    return schema


def _plain(value: float, kind: str) -> float | int:
    return int(value) if kind == "integer" and float(value).is_integer() else value


def input_schema(spec: CompiledInput) -> dict[str, Any]:
    """The JSON Schema of one compiled input."""
    schema: dict[str, Any]
    if spec.type == "string":
        schema = {"type": "string", "maxLength": spec.max_length or DEFAULT_MAX_STRING}
    elif spec.type == "integer":
        schema = _number_schema("integer", spec)
    elif spec.type == "number":
        schema = _number_schema("number", spec)
    elif spec.type == "boolean":
        schema = {"type": "boolean"}
    elif spec.type in ("enum", "model"):
        schema = {"type": "string", "enum": list(spec.choices or [])}
    elif spec.type == "seed":
        schema = {"oneOf": [_number_schema("integer", spec), {"const": RANDOM}]}
    else:  # media
        sources: dict[str, dict[str, Any]] = {
            "url": {"type": "string", "format": "uri", "maxLength": 2048},
            "upload_id": {"type": "string", "pattern": UPLOAD_ID_PATTERN},
            "data": {"type": "string", "contentEncoding": "base64"},
        }
        schema = {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {source: sources[source]},
                    "required": [source],
                    "additionalProperties": False,
                }
                for source in MEDIA_SOURCES
            ],
            "x-media": spec.type,
        }
    if spec.description:
        schema["description"] = spec.description
    if spec.default is not None:
        schema["default"] = spec.default
    return schema


def json_schema(template: Template) -> dict[str, Any]:
    """The JSON Schema (2020-12) of a run's `inputs` object for this template version."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": template.id,
        "description": template.description,
        "type": "object",
        "properties": {name: input_schema(spec) for name, spec in template.inputs.items()},
        "required": sorted(name for name, spec in template.inputs.items() if spec.required),
        "additionalProperties": False,
    }
