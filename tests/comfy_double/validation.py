"""`POST /prompt` validation as upstream's `execution.validate_prompt` does it.

Same order, same error types and messages for what the double supports: a missing or
unknown class_type (400 invalid_prompt), no output node (400 prompt_no_outputs), and per
output the recursive input checks (required inputs, links, return types, INT/FLOAT
ranges, combo values, LoadImage's file) giving `prompt_outputs_failed_validation` with
`node_errors`, or a 200 that runs only the valid outputs.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from tests.comfy_double.nodes import validate_custom


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def validate_prompt(
    prompt: dict[str, Any], object_info: dict[str, Any], input_dir: Path
) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """(valid, error, outputs to execute, node_errors), as upstream returns them."""
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            error = _error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
            return False, error, [], {}
        class_type = node["class_type"]
        if class_type not in object_info:
            error = _error(
                "invalid_prompt",
                f"Cannot execute because node {class_type} does not exist.",
                f"Node ID '#{node_id}'",
            )
            return False, error, [], {}
        if object_info[class_type].get("output_node") is True:
            outputs.append(node_id)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {}

    validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        try:
            valid, reasons = _validate_node(prompt, output, validated, object_info, input_dir)
        except Exception as exc:  # noqa: BLE001 - upstream turns any exception into a reason
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(exc),
                    "extra_info": {
                        "exception_type": type(exc).__name__,
                        "traceback": traceback.format_tb(exc.__traceback__),
                    },
                }
            ]
            validated[output] = (False, reasons)
        if valid:
            good.append(output)
            continue
        failed.append((output, reasons))
        for node_id, (ok, node_reasons) in validated.items():
            if ok or not node_reasons:
                continue
            entry = node_errors.setdefault(
                node_id,
                {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                },
            )
            entry["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errs in failed for e in errs)
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        error["details"] = details
        return False, error, [], node_errors
    return True, None, good, node_errors


def _validate_node(
    prompt: dict[str, Any],
    node_id: str,
    validated: dict[str, tuple[bool, list[dict[str, Any]]]],
    object_info: dict[str, Any],
    input_dir: Path,
) -> tuple[bool, list[dict[str, Any]]]:
    if node_id in validated:
        return validated[node_id]
    node = prompt[node_id]
    inputs = node["inputs"]
    spec = object_info[node["class_type"]]["input"]
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    errors: list[dict[str, Any]] = []
    valid = True
    custom = node["class_type"] == "LoadImage"  # inputs checked by VALIDATE_INPUTS instead
    for name, config in declared.items():
        input_type = config[0]
        extra = config[1] if len(config) > 1 else {}
        if name not in inputs:
            if name in spec.get("required", {}):
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": name,
                        "extra_info": {"input_name": name},
                    }
                )
            continue
        value = inputs[name]
        if isinstance(value, list):
            if len(value) != 2:
                errors.append(
                    {
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of "
                        "[node_id, slot_index]",
                        "details": name,
                        "extra_info": {"input_name": name, "received_value": value},
                    }
                )
                continue
            source = prompt[value[0]]  # KeyError for a missing node, as upstream
            received = object_info[source["class_type"]]["output"][value[1]]
            if not _type_matches(received, input_type):
                errors.append(
                    {
                        "type": "return_type_mismatch",
                        "message": "Return type mismatch between linked nodes",
                        "details": f"{name}, received_type({received}) mismatch "
                        f"input_type({input_type})",
                        "extra_info": {
                            "input_name": name,
                            "received_type": received,
                            "linked_node": value,
                        },
                    }
                )
                continue
            ok, _ = _validate_node(prompt, value[0], validated, object_info, input_dir)
            valid = valid and ok
            continue
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]  # upstream unwraps it in the prompt
        if custom:
            continue
        problem = _check_value(name, value, input_type, extra)
        if problem is not None:
            errors.append(problem)
    errors.extend(validate_custom(node["class_type"], inputs, input_dir))
    result = (not errors and valid, errors)
    validated[node_id] = result
    return result


def _check_value(
    name: str, value: Any, input_type: Any, extra: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        if input_type == "INT":
            value = int(value)
        elif input_type == "FLOAT":
            value = float(value)
    except (TypeError, ValueError) as exc:
        return {
            "type": "invalid_input_type",
            "message": f"Failed to convert an input value to a {input_type} value",
            "details": f"{name}, {value}, {exc}",
            "extra_info": {"input_name": name, "received_value": value},
        }
    info = {"input_name": name, "received_value": value}
    if "min" in extra and value < extra["min"]:
        return {
            "type": "value_smaller_than_min",
            "message": f"Value {value} smaller than min of {extra['min']}",
            "details": name,
            "extra_info": info,
        }
    if "max" in extra and value > extra["max"]:
        return {
            "type": "value_bigger_than_max",
            "message": f"Value {value} bigger than max of {extra['max']}",
            "details": name,
            "extra_info": info,
        }
    # Upstream checks only an old-style list of choices: a V3 "COMBO" input's value is not
    # checked by `/prompt` (a bad one fails when the node runs).
    options = input_type if isinstance(input_type, list) else None
    if options is not None and value not in options:
        return {
            "type": "value_not_in_list",
            "message": "Value not in list",
            "details": f"{name}: '{value}' not in {options}",
            "extra_info": info,
        }
    return None


def _type_matches(received: str, wanted: Any) -> bool:
    if not isinstance(wanted, str) or "*" in (received, wanted):
        return True
    return received == wanted or received in wanted.split(",")
