"""Compile a template's inputs against the node catalog, and resolve a run's values (pure).

Registering (`compile_template`) runs the checks every raw graph gets (structure, node
policy, file policy) and then checks each named input's places against the catalog: the
node exists, its class has the field, the field takes a value of the input's type (not a
link), and the template's bounds and choices lie inside the catalog's (a template may
narrow them, never widen). Running (`resolve`) checks each value against the compiled
input and writes it into a copy of the graph: that copy is what the job stores.
"""

from __future__ import annotations

import copy
import math
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.adapters.comfy.catalog import FILE_SUFFIXES, FieldSpec, FileInput, NodeCatalog
from app.adapters.comfy.file_policy import check_file_names
from app.adapters.comfy.node_policy import NodePolicy, check_nodes
from app.adapters.comfy.workflow import Graph, check_workflow
from app.core.errors import InvalidInput, InvalidTemplate, Problem
from app.core.templates import (
    DEFAULT_MAX_STRING,
    MEDIA_SOURCES,
    MEDIA_TYPES,
    RANDOM,
    CompiledInput,
    InputDef,
    Template,
)

__all__ = ["Resolved", "compile_template", "media_file_name", "resolve"]

#: Which catalog value kinds each value input type may set.
_KINDS: Mapping[str, frozenset[str]] = {
    "string": frozenset({"STRING"}),
    "integer": frozenset({"INT", "FLOAT"}),
    "number": frozenset({"FLOAT"}),
    "boolean": frozenset({"BOOLEAN"}),
    "seed": frozenset({"INT"}),
    "enum": frozenset({"COMBO"}),
}
#: The upload flags each media type may fill.
_UPLOAD_KINDS: Mapping[str, frozenset[str]] = {
    "image": frozenset({"image_upload", "animated_image_upload"}),
    "video": frozenset({"video_upload"}),
    "audio": frozenset({"audio_upload"}),
}
_BOUNDED = frozenset({"integer", "number", "seed"})
_CHOICES = frozenset({"enum", "model"})
#: A drawn seed stays exact in every JSON reader (JavaScript's safe integers).
_MAX_DRAWN_SEED = 2**53 - 1
_MEDIA_SUFFIX = {"image": ".png", "video": ".mp4", "audio": ".wav", "file": ".bin"}
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}\Z")


@dataclass(frozen=True, slots=True)
class _Target:
    """What the catalog says about one place."""

    node_id: str
    field: str
    spec: FieldSpec | None
    file: FileInput | None


def compile_template(
    graph: object,
    inputs: Mapping[str, InputDef],
    catalog: NodeCatalog,
    policy: NodePolicy,
    *,
    max_nodes: int,
    max_bytes: int,
    max_inputs: int,
) -> tuple[Graph, dict[str, CompiledInput]]:
    """The checked graph and compiled inputs; raises InvalidWorkflow or InvalidTemplate."""
    checked = check_workflow(graph, catalog, max_nodes=max_nodes, max_bytes=max_bytes)
    check_nodes(checked, policy, catalog)
    if len(inputs) > max_inputs:
        raise InvalidTemplate([Problem(f"{len(inputs)} inputs; the limit is {max_inputs}")])
    problems: list[Problem] = []
    compiled: dict[str, CompiledInput] = {}
    owners: dict[tuple[str, str], str] = {}
    for name, spec in inputs.items():
        before = len(problems)
        targets = _targets(name, spec, checked, catalog, owners, problems)
        if len(problems) == before:
            result = _compile(name, spec, targets, problems)
            if result is not None:
                compiled[name] = result
    if problems:
        raise InvalidTemplate(problems)
    # The fixed parts of the graph obey the file policy; a media place names the run's file.
    sample = _with_values(checked, {n: _sample(n, c) for n, c in compiled.items()}, compiled)
    media = [media_file_name(n, c.type, "") for n, c in compiled.items() if c.type in MEDIA_TYPES]
    check_file_names(sample, catalog, media)
    return checked, compiled


def _targets(
    name: str,
    spec: InputDef,
    graph: Graph,
    catalog: NodeCatalog,
    owners: dict[tuple[str, str], str],
    problems: list[Problem],
) -> list[_Target]:
    targets: list[_Target] = []
    for place in spec.places:
        node_id, field = place.node, place.field

        def problem(reason: str, node_id: str = node_id, field: str = field) -> None:
            problems.append(Problem(reason, input=name, node_id=node_id, field=field))

        key = (node_id, field)
        if key in owners:
            problem(f"is already set by input '{owners[key]}'")
            continue
        owners[key] = name
        node = graph.get(node_id)
        if node is None:
            problem("the workflow has no such node")
            continue
        class_type = node["class_type"]
        node_spec = catalog.get(class_type)
        field_spec = node_spec.fields.get(field) if node_spec is not None else None
        if node_spec is None or field_spec is None:
            problem(f"{class_type} has no input '{field}'")
            continue
        file = node_spec.file_inputs.get(field)
        reason = _type_problem(spec.type, field_spec, file, class_type)
        if reason:
            problem(reason)
            continue
        if isinstance(node["inputs"].get(field), list):
            problem("is linked from another node in the workflow; an input sets values only")
            continue
        targets.append(_Target(node_id, field, field_spec, file))
    return targets


def _type_problem(kind: str, spec: FieldSpec, file: FileInput | None, class_type: str) -> str:
    what = f"{class_type}.{spec.kind or 'unknown'}"
    if kind in MEDIA_TYPES:
        if file is None or not file.upload:
            return f"takes no uploaded file ({what}); a {kind} input needs a loader's upload field"
        allowed = _UPLOAD_KINDS.get(kind)
        if allowed is not None and file.kind not in allowed:
            return f"takes {file.kind.removesuffix('_upload')} uploads, not {kind}"
        return ""
    if kind == "model":
        if file is None or file.upload:
            return "is not a list of the deployment's files; a model input needs a loader's list"
        return ""
    if file is not None:
        # A free value here would let a caller name any file on the host.
        return "names a file; use a media input (uploads) or a model input (shipped files)"
    if spec.kind not in _KINDS[kind]:
        expected = " or ".join(sorted(_KINDS[kind]))
        if spec.kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            return f"takes a link of type {spec.kind}, not a value"
        return f"is {spec.kind}; a {kind} input needs {expected}"
    return ""


def _compile(
    name: str, spec: InputDef, targets: list[_Target], problems: list[Problem]
) -> CompiledInput | None:
    first = targets[0]

    def problem(reason: str, target: _Target | None = None) -> None:
        where = target or first
        problems.append(Problem(reason, input=name, node_id=where.node_id, field=where.field))

    before = len(problems)
    if spec.type not in _BOUNDED and (spec.minimum is not None or spec.maximum is not None):
        problem("minimum and maximum apply to integer, number and seed inputs only")
    if spec.type not in _CHOICES and spec.choices is not None:
        problem("choices apply to enum and model inputs only")
    if spec.type != "string" and spec.max_length is not None:
        problem("max_length applies to string inputs only")
    if spec.type in MEDIA_TYPES and spec.default is not None:
        problem("a media input cannot have a default; the caller sends the file")
    minimum, maximum = _bounds(spec, targets, problem)
    choices = _choices(spec, targets, problem)
    if len(problems) > before:
        return None
    compiled = CompiledInput(
        type=spec.type,
        places=[(t.node_id, t.field) for t in targets],
        required=spec.required if spec.required is not None else spec.default is None,
        default=spec.default,
        minimum=minimum,
        maximum=maximum,
        choices=choices,
        max_length=spec.max_length if spec.type == "string" else None,
        description=spec.description,
    )
    if spec.default is not None:
        reason = value_problem(compiled, spec.default)
        if reason:
            problem(f"default {spec.default!r} {reason}")
            return None
    if compiled.required and spec.default is not None:
        problem("a required input cannot have a default")
        return None
    return compiled


def _bounds(
    spec: InputDef, targets: list[_Target], problem: Callable[[str, _Target | None], None]
) -> tuple[float | None, float | None]:
    if spec.type not in _BOUNDED:
        return None, None
    low: float | None = None
    high: float | None = None
    for t in targets:
        assert t.spec is not None
        if (
            spec.minimum is not None
            and t.spec.minimum is not None
            and spec.minimum < t.spec.minimum
        ):
            problem(f"minimum {spec.minimum:g} is below the {t.spec.minimum:g} it accepts", t)
        if (
            spec.maximum is not None
            and t.spec.maximum is not None
            and spec.maximum > t.spec.maximum
        ):
            problem(f"maximum {spec.maximum:g} is over the {t.spec.maximum:g} it accepts", t)
        if t.spec.minimum is not None:
            low = t.spec.minimum if low is None else max(low, t.spec.minimum)
        if t.spec.maximum is not None:
            high = t.spec.maximum if high is None else min(high, t.spec.maximum)
    low = spec.minimum if spec.minimum is not None else low
    high = spec.maximum if spec.maximum is not None else high
    if low is not None and high is not None and low > high:
        problem(f"minimum {low:g} is over maximum {high:g}", None)
    return low, high


def _choices(
    spec: InputDef, targets: list[_Target], problem: Callable[[str, _Target | None], None]
) -> list[str] | None:
    if spec.type not in _CHOICES:
        return None
    allowed: list[str] | None = None
    for t in targets:
        assert t.spec is not None
        listed = t.file.choices if spec.type == "model" and t.file else t.spec.choices
        if spec.type == "model" and not listed:
            problem("this deployment ships no files for it", t)
        if spec.choices is not None:
            for choice in spec.choices:
                if choice not in listed:
                    problem(f"{choice!r} is not one of the values it accepts", t)
        allowed = list(listed) if allowed is None else [c for c in allowed if c in listed]
    result = spec.choices if spec.choices is not None else allowed or []
    if not result:
        problem("no value is accepted by every place of this input", None)
    return list(result)


def value_problem(spec: CompiledInput, value: object) -> str | None:
    """Why `value` is refused for `spec`, or None."""
    kind = spec.type
    if kind == "string":
        if not isinstance(value, str):
            return "must be a string"
        limit = spec.max_length or DEFAULT_MAX_STRING
        return f"is {len(value)} characters; the limit is {limit}" if len(value) > limit else None
    if kind == "boolean":
        return None if isinstance(value, bool) else "must be true or false"
    if kind in ("enum", "model"):
        if not isinstance(value, str) or value not in (spec.choices or []):
            shown = ", ".join(repr(c) for c in (spec.choices or [])[:10])
            more = ", ..." if len(spec.choices or []) > 10 else ""
            return f"must be one of {shown}{more}"
        return None
    if kind == "seed" and value == RANDOM:
        return None
    if kind in ("integer", "seed"):
        if isinstance(value, bool) or not isinstance(value, int):
            return 'must be an integer or "random"' if kind == "seed" else "must be an integer"
        return _range_problem(spec, value)
    if kind == "number":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return "must be a number"
        return _range_problem(spec, value)
    # media
    if (
        not isinstance(value, Mapping)
        or len(value) != 1
        or next(iter(value)) not in MEDIA_SOURCES
        or not isinstance(next(iter(value.values())), str)
    ):
        return (
            'must be one of {"url": "https://..."}, {"upload_id": "upl_..."} '
            'or {"data": "<base64>"}'
        )
    return None


def _range_problem(spec: CompiledInput, value: float) -> str | None:
    if spec.minimum is not None and value < spec.minimum:
        return f"{value:g} is below the minimum {spec.minimum:g}"
    if spec.maximum is not None and value > spec.maximum:
        return f"{value:g} is over the maximum {spec.maximum:g}"
    return None


@dataclass(frozen=True, slots=True)
class Resolved:
    """A run of a template: the graph to store, its media inputs and the values used."""

    graph: Graph
    #: `(file name the graph names, {source: value})` for each media input, the source
    #: one of MEDIA_SOURCES.
    media: list[tuple[str, dict[str, str]]]
    values: dict[str, Any]


def resolve(
    template: Template, values: Mapping[str, Any], draw: Callable[[int, int], int] | None = None
) -> Resolved:
    """The template's graph with `values` written in; raises InvalidInput naming each input.

    `draw(low, high)` picks a seed for "random" (tests inject one).
    """
    pick = draw or _draw
    problems: list[Problem] = []
    known = template.inputs
    for name in values:
        if name not in known:
            takes = ", ".join(sorted(known)) or "none"
            shown = name if len(name) <= 64 else name[:61] + "..."  # never echo a huge key
            problems.append(
                Problem(f"this template has no such input (it takes: {takes})", input=shown)
            )
    used: dict[str, Any] = {}
    for name, spec in known.items():
        if name in values:
            value = values[name]
        elif spec.default is not None:
            value = spec.default
        elif spec.required:
            problems.append(Problem(f"is required ({spec.type})", input=name))
            continue
        else:
            continue
        reason = value_problem(spec, value)
        if reason:
            node_id, field = spec.places[0]
            problems.append(Problem(reason, input=name, node_id=node_id, field=field))
            continue
        if spec.type == "seed" and value == RANDOM:
            low = int(spec.minimum) if spec.minimum is not None else 0
            high = (
                min(int(spec.maximum), _MAX_DRAWN_SEED)
                if spec.maximum is not None
                else _MAX_DRAWN_SEED
            )
            value = pick(low, high)
        used[name] = value
    if problems:
        raise InvalidInput(problems)
    media: list[tuple[str, dict[str, str]]] = []
    graph_values: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    for name, value in used.items():
        kind = known[name].type
        recorded[name] = value
        if kind in MEDIA_TYPES:
            file_name = media_file_name(name, kind, value.get("url", ""))
            media.append((file_name, dict(value)))
            if "data" in value:
                # The job record keeps the values used; the file itself goes to an upload.
                recorded[name] = {"data": f"<{len(value['data'])} base64 characters>"}
            value = file_name
        graph_values[name] = value
    graph = _with_values(template.workflow, graph_values, known)
    return Resolved(graph=graph, media=media, values=recorded)


def media_file_name(name: str, kind: str, url: str) -> str:
    """The name a media input's file gets in the job: the input's name and a suffix.

    The URL's suffix is kept when it is a known file ending (ComfyUI's loaders look at
    the content, but some pick a decoder by the ending), else the type's usual one.
    """
    path = url.split("?", 1)[0].split("#", 1)[0]
    found = _SUFFIX.search(path.rsplit("/", 1)[-1])
    suffix = found.group(0).lower() if found and found.group(0).lower() in FILE_SUFFIXES else ""
    return f"{name}{suffix or _MEDIA_SUFFIX.get(kind, '')}"


def _with_values(
    graph: Mapping[str, Any], values: Mapping[str, Any], specs: Mapping[str, CompiledInput]
) -> Graph:
    result: Graph = copy.deepcopy(dict(graph))
    for name, value in values.items():
        for node_id, field in specs[name].places:
            result[node_id]["inputs"][field] = value
    return result


def _sample(name: str, spec: CompiledInput) -> Any:
    """A value standing in for the input when the fixed graph is checked at registration."""
    if spec.type in MEDIA_TYPES:
        return media_file_name(name, spec.type, "")
    if spec.default is not None:
        return spec.default
    return (spec.choices or [""])[0] if spec.type in _CHOICES else 0


def _draw(low: int, high: int) -> int:
    return low + secrets.randbelow(high - low + 1)
