"""ComfyUI's own input validation, run from the node catalog before a job is queued (pure).

`check_inputs` mirrors `execution.validate_prompt` / `validate_inputs` of upstream ComfyUI,
so a workflow ComfyUI's `/prompt` would refuse is refused at submit (a 400 naming the node,
the input and the reason) instead of after it waited for a GPU, and every workflow that
`/prompt` accepts is still accepted. The rules, as upstream applies them:

* only nodes that feed an output node are checked, through the links of their declared
  inputs (a node that feeds nothing may be anything);
* a required input must be present; optional, hidden and undeclared inputs (a
  `control_after_generate` the UI left behind, ...) are never required nor checked;
* a link's source type must match the input's type: equal, `*` on either side, or
  comma-separated unions that share a type (`"INT,FLOAT"` takes an `INT`); an old-style
  list of choices takes only a `*` link;
* INT and FLOAT values are converted as ComfyUI does (`int("8")`, `int(7.9)`, `float("1e3")`
  are fine; `int("abc")` is not) and then compared with the input's min and max;
* an old-style list of choices (`[["a", "b"], {...}]`) must hold the value; a V3
  `"COMBO"` input is not checked, as ComfyUI's `/prompt` does not check it either;
* a `{"__value__": ...}` literal (how a list value is written) is unwrapped first;
* inputs a node validates itself (`VALIDATE_INPUTS` / V3 `validate_inputs`; see
  `SELF_VALIDATED`) skip the range and choice checks, as upstream skips them.

One rule is ours: ComfyUI answers 200 to a partly broken graph and runs only its valid
outputs, listing the others in `node_errors`; our client refuses that answer at render
(`ComfyClient`: a partial result would be a surprise), so such a graph is refused here,
before it waits for a GPU, with the same `node_errors`.

File-name inputs (uploads, model lists) are the file policy's (`file_policy`), which is
stricter than ComfyUI (a job may name only its own inputs or the deployment's models), and
the graph's shape, unknown classes, output indexes and "no output node" are
`workflow.check_workflow`'s; this module expects a graph that passed both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.adapters.comfy.catalog import FieldSpec, NodeCatalog, NodeSpec
from app.adapters.comfy.workflow import id_order
from app.core.errors import InvalidNodes, Problem

__all__ = ["SELF_VALIDATED", "Reason", "Verdict", "check_inputs", "types_match", "validate"]

#: Node classes of ComfyUI that validate some of their inputs themselves: upstream then
#: skips its own range and choice checks for those inputs ("input_types": it also skips the
#: link type checks). The catalog cannot tell, so they are listed here from upstream's code.
SELF_VALIDATED: Mapping[str, frozenset[str]] = {
    "LoadImage": frozenset({"image"}),
    "LoadImageMask": frozenset({"image"}),
    "LoadLatent": frozenset({"latent"}),
    "LoadAudio": frozenset({"audio"}),
    "LoadVideo": frozenset({"file"}),
    "LoadImageSetNode": frozenset({"images", "resize_method"}),
    "KlingCameraControls": frozenset(
        {"horizontal_movement", "vertical_movement", "pan", "tilt", "roll", "zoom"}
    ),
    "FluxProUltraImageNode": frozenset({"aspect_ratio"}),
    "TripoConversionNode": frozenset({"input_types"}),
}
_ANY = "*"
#: Which literal inputs ComfyUI converts, and how, before comparing them with min/max.
_CONVERT: Mapping[str, Callable[[Any], float]] = {"INT": int, "FLOAT": float}


@dataclass(frozen=True, slots=True)
class Reason:
    """One error of one node, as ComfyUI's `validate_inputs` words it."""

    type: str
    message: str
    details: str
    input_name: str
    #: Our own wording, for the problem list of the 400.
    text: str

    def as_comfy(self) -> dict[str, Any]:
        """The entry of `node_errors[id]["errors"]` that ComfyUI would send."""
        return {
            "type": self.type,
            "message": self.message,
            "details": self.details,
            "extra_info": {"input_name": self.input_name},
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """Which outputs would run, and the errors of each node that stops the others."""

    good_outputs: tuple[str, ...]
    #: node id -> (class_type, its errors, the outputs it stops)
    node_errors: Mapping[str, tuple[str, tuple[Reason, ...], tuple[str, ...]]] = field(
        default_factory=dict
    )

    def comfy_node_errors(self) -> dict[str, Any]:
        """`node_errors` in ComfyUI's shape."""
        return {
            node_id: {
                "errors": [r.as_comfy() for r in reasons],
                "dependent_outputs": list(outputs),
                "class_type": class_type,
            }
            for node_id, (class_type, reasons, outputs) in self.node_errors.items()
        }


def check_inputs(graph: Mapping[str, Any], catalog: NodeCatalog) -> Verdict:
    """Raise `InvalidNodes` if ComfyUI would list any node error for `graph` (see above)."""
    verdict = validate(graph, catalog)
    if not verdict.node_errors:
        return verdict
    problems = [
        Problem(f"{reason.text} ({class_type})", node_id=node_id, field=reason.input_name)
        for node_id, (class_type, reasons, _) in verdict.node_errors.items()
        for reason in reasons
    ]
    raise InvalidNodes(problems, verdict.comfy_node_errors())


def validate(graph: Mapping[str, Any], catalog: NodeCatalog) -> Verdict:
    """ComfyUI's verdict on a graph that passed `check_workflow` (output nodes, links exist)."""
    own: dict[str, tuple[Reason, ...]] = {}
    feeds: dict[str, tuple[str, ...]] = {}
    for node_id, node in graph.items():
        spec = catalog.get(str(node.get("class_type")))
        if spec is None:  # check_workflow refuses unknown classes; nothing to check here
            own[node_id], feeds[node_id] = (), ()
            continue
        own[node_id], feeds[node_id] = _check_node(graph, node["inputs"], spec, catalog)
    outputs = sorted(
        (node_id for node_id, node in graph.items() if catalog.is_output(node["class_type"])),
        key=id_order,
    )
    good: list[str] = []
    stopped: dict[str, list[str]] = {}
    for output in outputs:
        failing = [n for n in _upstream(output, feeds) if own[n]]
        if not failing:
            good.append(output)
        for node_id in failing:
            stopped.setdefault(node_id, []).append(output)
    return Verdict(
        good_outputs=tuple(good),
        node_errors={
            node_id: (graph[node_id]["class_type"], own[node_id], tuple(outs))
            for node_id, outs in sorted(stopped.items(), key=lambda item: id_order(item[0]))
        },
    )


def types_match(received: str, wanted: str) -> bool:
    """Whether an output of type `received` may feed an input of type `wanted`.

    ComfyUI's rule (`validate_node_input`, and the `__ne__` of its `*` and V3 types):
    equal, either is `*`, or the comma-separated sets share a type.
    """
    if received == wanted or _ANY in (received, wanted):
        return True
    return bool(_type_set(received) & _type_set(wanted))


def _check_node(
    graph: Mapping[str, Any], inputs: Mapping[str, Any], spec: NodeSpec, catalog: NodeCatalog
) -> tuple[tuple[Reason, ...], tuple[str, ...]]:
    """(the node's own errors, the nodes whose outputs it reads through checked links)."""
    self_checked = SELF_VALIDATED.get(spec.name, frozenset())
    reasons: list[Reason] = []
    sources: list[str] = []
    required = set(spec.required_inputs)
    for name, declared in spec.fields.items():
        if name not in inputs:
            if name in required:
                reasons.append(
                    Reason(
                        "required_input_missing",
                        "Required input is missing",
                        name,
                        name,
                        "required input is missing",
                    )
                )
            continue
        value = inputs[name]
        if isinstance(value, list):  # a link; its form was checked by check_workflow
            source = str(value[0])
            reason = (
                None
                if "input_types" in self_checked
                else _link_problem(name, declared, _received(graph, value, catalog))
            )
            if reason is not None:
                reasons.append(reason)
            else:
                sources.append(source)
            continue
        if name in spec.file_inputs:  # the file policy's, and stricter than ComfyUI
            continue
        reason = _value_problem(name, value, declared, checked=name not in self_checked)
        if reason is not None:
            reasons.append(reason)
    return tuple(reasons), tuple(sources)


def _received(graph: Mapping[str, Any], link: list[Any], catalog: NodeCatalog) -> str:
    source = catalog.get(str(graph[link[0]]["class_type"]))
    index = link[1]
    if source is None or not 0 <= index < len(source.outputs):
        return _ANY  # check_workflow refuses these; nothing to compare here
    return str(source.outputs[index])


def _link_problem(name: str, declared: FieldSpec, received: str) -> Reason | None:
    wanted = "a list of choices" if declared.listed else declared.kind
    if received == _ANY or (not declared.listed and (not wanted or types_match(received, wanted))):
        return None
    return Reason(
        "return_type_mismatch",
        "Return type mismatch between linked nodes",
        f"{name}, received_type({received}) mismatch input_type({wanted})",
        name,
        f"links to an output of type {received}, but the input takes {wanted}",
    )


def _value_problem(name: str, raw: object, declared: FieldSpec, *, checked: bool) -> Reason | None:
    value: Any = raw["__value__"] if isinstance(raw, Mapping) and "__value__" in raw else raw
    convert = _CONVERT.get(declared.kind)
    if convert is None:
        return _choice_problem(name, value, declared) if checked else None
    try:
        number: float = convert(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return Reason(
            "invalid_input_type",
            f"Failed to convert an input value to a {declared.kind} value",
            f"{name}, {value}, {exc}",
            name,
            f"{_short(value)} is not a valid {declared.kind}",
        )
    if not checked:
        return None
    low, high = declared.minimum, declared.maximum
    if low is not None and number < low:
        return Reason(
            "value_smaller_than_min",
            f"Value {number} smaller than min of {low}",
            name,
            name,
            f"{number} is below the minimum {low}",
        )
    if high is not None and number > high:
        return Reason(
            "value_bigger_than_max",
            f"Value {number} bigger than max of {high}",
            name,
            name,
            f"{number} is above the maximum {high}",
        )
    return None


def _choice_problem(name: str, value: object, declared: FieldSpec) -> Reason | None:
    if not declared.listed or _among(value, declared.choices):
        return None
    # ComfyUI does not echo long lists (model folders); neither do we.
    count = len(declared.choices)
    listed = f"(list of length {count})" if count > 20 else str(list(declared.choices))
    return Reason(
        "value_not_in_list",
        "Value not in list",
        f"{name}: '{value}' not in {listed}",
        name,
        f"{_short(value)} is not one of the allowed values {listed}",
    )


def _among(value: object, choices: tuple[str, ...]) -> bool:
    # The catalog keeps choices as text; a number among numbers reads as its text, which can
    # only accept more than ComfyUI, never less.
    return value in choices or (not isinstance(value, str) and str(value) in choices)


def _upstream(output: str, feeds: Mapping[str, tuple[str, ...]]) -> list[str]:
    """`output` and every node it reads through checked links (iterative: graphs are deep)."""
    seen = {output}
    order = [output]
    stack = [output]
    while stack:
        for source in feeds.get(stack.pop(), ()):
            if source in feeds and source not in seen:
                seen.add(source)
                order.append(source)
                stack.append(source)
    return order


def _type_set(kind: str) -> set[str]:
    return {t.strip() for t in kind.split(",")}


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
