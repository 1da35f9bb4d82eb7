"""Checks on a client's workflow before it is queued, and binding of its inputs (pure).

A workflow is ComfyUI's API format: `{node_id: {"class_type": str, "inputs": {...}}}`,
where an input is a literal or a link `[source_node_id, output_index]`. ComfyUI itself
treats every list input as a link, so we do too.

`check_workflow` catches what can be caught without the server: the wrong format, links
to nothing, cycles, and (given a catalog) unknown node classes, bad output indexes and a
graph with no output node. Input types, ranges and choices are `validation.check_inputs`'s,
file names `file_policy`'s; ComfyUI validates again when the job is sent, and its answer
becomes `InvalidWorkflow` in the client.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from app.adapters.comfy.catalog import NodeCatalog
from app.core.errors import InvalidWorkflow
from app.core.ids import is_ascii_number

#: Problems listed in one error message; more are counted, not listed.
_MAX_PROBLEMS = 8

Graph = dict[str, dict[str, Any]]


def check_workflow(
    graph: object, catalog: NodeCatalog | None, *, max_nodes: int, max_bytes: int
) -> Graph:
    """Return `graph` as a checked API-format workflow, or raise `InvalidWorkflow`."""
    if not isinstance(graph, dict):
        raise InvalidWorkflow(
            f"workflow must be a JSON object of node id -> node, not {_json_type(graph)}"
        )
    _refuse_other_formats(graph)
    try:
        # No NaN or Infinity: Python reads them from a request body, but they are not JSON,
        # and the render's POST /prompt refused them only after a renderer was taken.
        size = len(json.dumps(graph, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidWorkflow(
            "workflow is not plain JSON (NaN and Infinity are not JSON numbers)"
        ) from exc
    if size > max_bytes:
        raise InvalidWorkflow(f"workflow is {size} bytes; the limit is {max_bytes}")
    if not graph:
        raise InvalidWorkflow("workflow has no nodes")
    if len(graph) > max_nodes:
        raise InvalidWorkflow(f"workflow has {len(graph)} nodes; the limit is {max_nodes}")

    problems = _shape_problems(graph)
    if problems:
        _raise(problems)
    checked: Graph = graph  # the shape checks above proved it
    problems = _link_problems(checked, catalog)
    if catalog is not None:
        problems = _class_problems(checked, catalog) + problems
    if problems:
        _raise(problems)
    cycle = _find_cycle(checked)
    if cycle:
        _raise([f"the links form a cycle: {' -> '.join(cycle)}"])
    if catalog is not None and not any(
        catalog.is_output(node["class_type"]) for node in checked.values()
    ):
        raise InvalidWorkflow(
            "workflow has no output node (such as SaveImage), so ComfyUI would run nothing"
        )
    return checked


def bind_inputs(graph: Mapping[str, Any], uploaded: Mapping[str, str]) -> Graph:
    """A copy of `graph` where each string input equal to a client input name is replaced.

    `uploaded` maps the client's name (`"face.png"`) to the name ComfyUI knows the file by
    (`"<job subfolder>/face.png"`), so `LoadImage {"image": "face.png"}` loads the job's
    own copy. Links and non-string values are left alone.
    """
    bound: Graph = copy.deepcopy(dict(graph))
    for node in bound.values():
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        for key, value in inputs.items():
            if isinstance(value, str) and value in uploaded:
                inputs[key] = uploaded[value]
    return bound


def referenced_inputs(graph: Mapping[str, Any], names: Iterable[str]) -> set[str]:
    """Which of `names` appear as a string input value somewhere in `graph`."""
    wanted = set(names)
    found: set[str] = set()
    for node in graph.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        found.update(v for v in inputs.values() if isinstance(v, str) and v in wanted)
    return found


def _refuse_other_formats(graph: Mapping[str, Any]) -> None:
    """Name the common wrong formats instead of reporting their keys as bad nodes."""
    ui = graph.get("workflow") if isinstance(graph.get("workflow"), dict) else graph
    if isinstance(ui, Mapping) and isinstance(ui.get("nodes"), list) and "links" in ui:
        raise InvalidWorkflow(
            "this is the UI format (it has 'nodes' and 'links'); "
            "export the workflow with 'Save (API Format)' (enable dev mode options) and send that"
        )
    prompt = graph.get("prompt")
    if len(graph) <= 3 and isinstance(prompt, dict) and prompt and "class_type" not in graph:
        raise InvalidWorkflow(
            "send the API-format graph itself, not a request body with a 'prompt' key"
        )


def _shape_problems(graph: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for node_id, node in graph.items():
        if not isinstance(node_id, str) or not node_id.strip():
            problems.append(f"node id {node_id!r} is not a non-empty string")
            continue
        if not isinstance(node, dict):
            problems.append(f"node {node_id} must be an object, not {_json_type(node)}")
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            problems.append(f"node {node_id} has no class_type")
        inputs = node.get("inputs")
        if inputs is None:
            problems.append(f"node {node_id} has no inputs object")
        elif not isinstance(inputs, dict):
            problems.append(f"node {node_id} inputs must be an object, not {_json_type(inputs)}")
    return problems


def _class_problems(graph: Graph, catalog: NodeCatalog) -> list[str]:
    unknown: dict[str, list[str]] = {}
    for node_id, node in graph.items():
        if node["class_type"] not in catalog:
            unknown.setdefault(node["class_type"], []).append(node_id)
    if not unknown:
        return []
    listed = ", ".join(
        f"{cls} (node {', '.join(sorted(ids, key=id_order))})"
        for cls, ids in sorted(unknown.items())
    )
    return [f"unknown node types: {listed}; this server does not have them installed"]


def _link_problems(graph: Graph, catalog: NodeCatalog | None) -> list[str]:
    problems: list[str] = []
    for node_id in sorted(graph, key=id_order):
        for name, value in graph[node_id]["inputs"].items():
            if not isinstance(value, list):
                continue
            where = f"node {node_id} input '{name}'"
            if len(value) != 2 or not isinstance(value[0], str) or not _is_index(value[1]):
                problems.append(
                    f'{where} is a list but not a link ["node_id", output_index]: {_short(value)}'
                )
                continue
            source, index = value[0], value[1]
            if source not in graph:
                problems.append(f"{where} links to node {source}, which does not exist")
                continue
            if catalog is None:
                continue
            source_type = graph[source]["class_type"]
            count = catalog.output_count(source_type) if source_type in catalog else None
            if count is not None and not 0 <= index < count:
                problems.append(
                    f"{where} links to output {index} of node {source} ({source_type}), "
                    f"which has {count} output{'s' if count != 1 else ''}"
                )
    return problems


def _find_cycle(graph: Graph) -> list[str]:
    """One cycle of links as a list of node ids, or [] (ComfyUI fails these at run time)."""
    deps = {
        node_id: [v[0] for v in node["inputs"].values() if isinstance(v, list)]
        for node_id, node in graph.items()
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(deps, key=id_order):
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node_id, i = stack.pop()
            if i == 0:
                state[node_id] = 1
                path.append(node_id)
            if i < len(deps[node_id]):
                stack.append((node_id, i + 1))
                nxt = deps[node_id][i]
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                if not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node_id] = 2
                path.pop()
    return []


def _raise(problems: list[str]) -> None:
    shown = problems[:_MAX_PROBLEMS]
    more = len(problems) - len(shown)
    message = "; ".join(shown) + (f"; and {more} more problems" if more else "")
    raise InvalidWorkflow(message)


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def id_order(node_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the rest (ComfyUI's ids are usually numbers)."""
    return (0, int(node_id)) if is_ascii_number(node_id) else (1, node_id)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if value is None:
        return "null"
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
