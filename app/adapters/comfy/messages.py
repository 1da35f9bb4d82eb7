"""Reading ComfyUI's answers: outputs, validation errors, failures and history (pure).

Shapes are those of upstream ComfyUI's HTTP and websocket API (see `docs/comfyui.md`).
Everything a client may see is built here, and none of it is ComfyUI's own text: its
validation details and exception messages carry host paths, folder listings ("Value not
in list" lists the files of a folder, other jobs' sub-folders included), other jobs' file
names and tracebacks. A job error keeps what helps the caller, the node id, its type,
the input and a reason in our words; the client logs ComfyUI's full answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.adapters.comfy.workflow import id_order
from app.core.errors import RenderFailed

#: Longest text taken from a ComfyUI message into one of our error messages.
_MAX_TEXT = 300
#: Longest whole error message built here.
_MAX_MESSAGE = 1000

TerminalKind = Literal["success", "error", "interrupted"]

#: Our words for each kind of ComfyUI validation error (`node_errors[*].errors[*].type`).
_NODE_REASONS: Mapping[str, str] = {
    "required_input_missing": "a required input is missing",
    "value_not_in_list": "the value is not one of the choices this server offers",
    "value_smaller_than_min": "the value is below the minimum",
    "value_bigger_than_max": "the value is above the maximum",
    "invalid_input_type": "the value has the wrong type",
    "return_type_mismatch": "the linked output has a type this input does not take",
    "bad_linked_input": "the link is not a valid [node_id, output_index] pair",
    "exception_during_validation": "could not be validated (does a link name a missing node?)",
    "exception_during_inner_validation": "could not be validated",
    "custom_validation_failed": (
        "the node's own check refused the value (a file name must be one of this job's inputs)"
    ),
    "dependency_cycle": "the links form a cycle",
}
#: Our words for a refusal of the whole prompt (`error.type`), when no node is named.
_PROMPT_REASONS: Mapping[str, str] = {
    "invalid_prompt": "a node has no class_type or names a node type this server does not have",
    "prompt_no_outputs": "the workflow has no output node",
    "no_prompt": "no workflow was sent",
    "prompt_outputs_failed_validation": "some nodes are invalid",
}
#: What may be echoed of a name ComfyUI sends back (a class, an input, a type).
_IDENTIFIER = re.compile(r"[A-Za-z0-9_ .:+*,|-]{1,64}")
_NODE_ID_IN_DETAILS = re.compile(r"Node ID '#?([A-Za-z0-9_:.-]{1,64})'")


@dataclass(frozen=True, slots=True)
class ComfyOutput:
    """One file ComfyUI reported for an output node, as `/view` addresses it."""

    node_id: str
    filename: str
    subfolder: str
    #: "output" for saved files, "temp" for previews.
    type: str
    #: The key ComfyUI listed it under: "images", "gifs", "videos", "audio", ...
    kind: str = "images"


@dataclass(frozen=True, slots=True)
class PromptEnding:
    """How a prompt ended, with the data of the message that said so."""

    kind: TerminalKind
    data: Mapping[str, Any]


def outputs_from(node_outputs: Mapping[str, Any]) -> list[ComfyOutput]:
    """Every file in a history `outputs` object (or collected `executed` outputs).

    Any list of `{filename, subfolder, type}` counts, whatever its key, so video and
    audio nodes and custom nodes with their own keys are covered. Other values (the
    `animated` flags of SaveAnimatedWEBP, PreviewAny's `text`) are not files.
    """
    found: list[ComfyOutput] = []
    for node_id, ui in node_outputs.items():
        if not isinstance(ui, Mapping):
            continue
        for kind, items in ui.items():
            if not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                    found.append(
                        ComfyOutput(
                            node_id=str(node_id),
                            filename=item["filename"],
                            subfolder=str(item.get("subfolder") or ""),
                            type=str(item.get("type") or "output"),
                            kind=str(kind),
                        )
                    )
    return found


def select_outputs(outputs: list[ComfyOutput]) -> list[ComfyOutput]:
    """The files a job delivers: saved ("output") files; previews only if nothing was saved.

    A workflow that ends in PreviewImage alone still delivers its images, but one that
    saves its results does not also deliver the previews along the way. "input" files
    (ComfyUI may echo inputs back) are never delivered.
    """
    saved = [o for o in outputs if o.type == "output"]
    if saved:
        return saved
    return [o for o in outputs if o.type == "temp"]


def validation_message(body: object) -> str:
    """A short message for a `POST /prompt` 400: what was refused, node by node, in our words."""
    if not isinstance(body, Mapping):
        return "ComfyUI rejected the workflow"
    error = body.get("error")
    kind = _text(error.get("type")) if isinstance(error, Mapping) else ""
    parts: list[str] = []
    node_errors = body.get("node_errors")
    if isinstance(node_errors, Mapping):
        for node_id in sorted(node_errors, key=lambda node_id: id_order(str(node_id))):
            entry = node_errors[node_id]
            if not isinstance(entry, Mapping):
                continue
            label = f"node {_name(node_id) or '?'}"
            if _name(entry.get("class_type")):
                label += f" ({_name(entry.get('class_type'))})"
            errors = entry.get("errors")
            reasons = [_node_reason(e) for e in errors if isinstance(e, Mapping)] if errors else []
            parts.append(f"{label}: {'; '.join(reasons) or 'invalid'}")
    message = "ComfyUI rejected the workflow"
    if parts:
        return _cut(f"{message}: " + " | ".join(parts), _MAX_MESSAGE)
    reason = _PROMPT_REASONS.get(kind, "the workflow is not valid")
    said = str(error.get("message") or "") if isinstance(error, Mapping) else ""
    if kind == "invalid_prompt" and "class_type" in said:
        reason = "a node has no class_type"
    elif kind == "invalid_prompt" and "does not exist" in said:
        reason = "a node's type is not installed on this server"
    details = error.get("details") if isinstance(error, Mapping) else None
    found = _NODE_ID_IN_DETAILS.search(str(details or ""))
    where = f" (node {found.group(1)})" if found else ""
    return _cut(f"{message}: {reason}{where}", _MAX_MESSAGE)


def _node_reason(error: Mapping[str, Any]) -> str:
    """One validation error in our words, with the input it concerns."""
    extra = error.get("extra_info")
    extra = extra if isinstance(extra, Mapping) else {}
    kind = _text(error.get("type"))
    reason = _NODE_REASONS.get(kind, "the value is invalid")
    config = extra.get("input_config")
    options = config[1] if isinstance(config, list) and len(config) > 1 else None
    received = extra.get("received_value")
    if kind in ("value_smaller_than_min", "value_bigger_than_max") and _is_number(received):
        bound = "min" if kind == "value_smaller_than_min" else "max"
        limit = options.get(bound) if isinstance(options, Mapping) else None
        if _is_number(limit):
            reason = f"{received} is {reason.removeprefix('the value is ')} {limit}"
    elif kind == "return_type_mismatch":
        got = _name(extra.get("received_type"))
        wanted = _name(config[0]) if isinstance(config, list) and config else ""
        if got and wanted:
            reason = f"the linked output is {got}, this input takes {wanted}"
    input_name = _name(extra.get("input_name"))
    return f"input '{input_name}': {reason}" if input_name else reason


def failure(terminal: PromptEnding) -> RenderFailed:
    """The `RenderFailed` for an `execution_error` or an interruption we did not ask for.

    The exception's type is kept (a Python class name); its message only when it is plain
    words and numbers, with no path, file name, list, quote or job id in it.
    """
    data = terminal.data
    node_id = _name(data.get("node_id")) or None
    node_type = _name(data.get("node_type")) or None
    where = f"node {node_id}" if node_id else "a node"
    if node_type:
        where += f" ({node_type})"
    if terminal.kind == "interrupted":
        message = f"ComfyUI interrupted the workflow at {where}"
    else:
        exc_type = _name(data.get("exception_type"))
        exc_message = _text(data.get("exception_message"))
        said = exc_message if _plain(exc_message) else ""
        reason = ": ".join(p for p in (exc_type, said) if p) or "unknown error"
        if exc_message and not said:
            reason += " (details are in the render log)"
        message = f"{where} failed: {reason}"
    return RenderFailed(_cut(message, _MAX_MESSAGE), node_id=node_id, node_type=node_type)


#: An exception message that may be shown: words, numbers and light punctuation only.
_PLAIN = re.compile(r"[A-Za-z0-9 ,.;:()=<>+*_-]*")
_FILE_LIKE = re.compile(r"\w\.[A-Za-z][A-Za-z0-9]{1,5}\b|job_[0-9a-f]", re.IGNORECASE)


def _plain(text: str) -> bool:
    return bool(text) and bool(_PLAIN.fullmatch(text)) and not _FILE_LIKE.search(text)


def _name(value: object) -> str:
    """A name ComfyUI echoes (node id, class, input, type), or "" unless it is plain."""
    if isinstance(value, list | tuple):
        return ""
    text = _text(value)
    return text if _IDENTIFIER.fullmatch(text) else ""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A finished prompt as `GET /history/{id}` reports it."""

    terminal: PromptEnding
    outputs: list[ComfyOutput]
    cached_nodes: frozenset[str]


def read_history(body: object, prompt_id: str) -> HistoryEntry | None:
    """The finished prompt's entry, or None while it has none (queued, running, unknown).

    ComfyUI writes a history entry only once a prompt is done, so its presence is the
    signal; `status.messages` then says how it ended.
    """
    if not isinstance(body, Mapping):
        return None
    entry = body.get(prompt_id)
    if not isinstance(entry, Mapping):
        return None
    raw_outputs = entry.get("outputs")
    outputs = outputs_from(raw_outputs) if isinstance(raw_outputs, Mapping) else []
    status = entry.get("status")
    messages: list[Any] = []
    status_str = "success"
    if isinstance(status, Mapping):
        status_str = _text(status.get("status_str")) or "success"
        raw_messages = status.get("messages")
        messages = raw_messages if isinstance(raw_messages, list) else []
    cached: set[str] = set()
    ending: PromptEnding | None = None
    for message in messages:
        if not (isinstance(message, list) and len(message) == 2):
            continue
        kind, data = message
        if not isinstance(data, Mapping):
            continue
        if kind == "execution_cached" and isinstance(data.get("nodes"), list):
            cached.update(str(n) for n in data["nodes"])
        elif kind == "execution_error":
            ending = PromptEnding("error", data)
        elif kind == "execution_interrupted":
            ending = PromptEnding("interrupted", data)
    if status_str == "success":
        ending = PromptEnding("success", {"prompt_id": prompt_id})
    elif ending is None:
        ending = PromptEnding("error", {"prompt_id": prompt_id, "exception_message": status_str})
    return HistoryEntry(terminal=ending, outputs=outputs, cached_nodes=frozenset(cached))


def _text(value: object) -> str:
    """A one-line, bounded rendering of a value ComfyUI sent."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return _cut(text, _MAX_TEXT)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
