"""Reading ComfyUI's answers: outputs, validation errors, failures and history (pure).

Shapes are those of upstream ComfyUI's HTTP and websocket API (see `docs/comfyui.md`).
Everything a client may see is built here, and none of it carries a traceback: ComfyUI
sends Python tracebacks (with its file paths) in `execution_error` and validation
errors, and those stay in ComfyUI's own log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.core.errors import RenderFailed

#: Longest text taken from a ComfyUI message into one of our error messages.
_MAX_TEXT = 300
#: Longest whole error message built here.
_MAX_MESSAGE = 1000

TerminalKind = Literal["success", "error", "interrupted"]


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
    """A short message for a `POST /prompt` 400: the error, then each bad node's problems."""
    if not isinstance(body, Mapping):
        return "ComfyUI rejected the workflow"
    error = body.get("error")
    head = ""
    details = ""
    if isinstance(error, Mapping):
        head = _text(error.get("message"))
        details = _text(error.get("details"))
    elif isinstance(error, str):
        head = _text(error)
    parts: list[str] = []
    node_errors = body.get("node_errors")
    if isinstance(node_errors, Mapping):
        for node_id in sorted(node_errors, key=_id_order):
            entry = node_errors[node_id]
            if not isinstance(entry, Mapping):
                continue
            label = f"node {node_id}"
            if entry.get("class_type"):
                label += f" ({_text(entry.get('class_type'))})"
            errors = entry.get("errors")
            reasons = [_reason(e) for e in errors if isinstance(e, Mapping)] if errors else []
            parts.append(f"{label}: {'; '.join(r for r in reasons if r) or 'invalid'}")
    message = "ComfyUI rejected the workflow"
    if head:
        message += f": {head}"
    if parts:
        message += ": " + " | ".join(parts)
    elif details:
        message += f" ({details})"
    return _cut(message, _MAX_MESSAGE)


def failure(terminal: PromptEnding) -> RenderFailed:
    """The `RenderFailed` for an `execution_error` or an interruption we did not ask for."""
    data = terminal.data
    node_id = _text(data.get("node_id")) or None
    node_type = _text(data.get("node_type")) or None
    where = f"node {node_id}" if node_id else "a node"
    if node_type:
        where += f" ({node_type})"
    if terminal.kind == "interrupted":
        message = f"ComfyUI interrupted the workflow at {where}"
    else:
        exc_type = _text(data.get("exception_type"))
        exc_message = _text(data.get("exception_message"))
        reason = ": ".join(p for p in (exc_type, exc_message) if p) or "unknown error"
        message = f"{where} failed: {reason}"
    return RenderFailed(_cut(message, _MAX_MESSAGE), node_id=node_id, node_type=node_type)


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


def _reason(error: Mapping[str, Any]) -> str:
    message = _text(error.get("message"))
    details = _text(error.get("details"))
    return f"{message}: {details}" if message and details else message or details


def _text(value: object) -> str:
    """A one-line, bounded rendering of a value ComfyUI sent."""
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return _cut(text, _MAX_TEXT)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _id_order(node_id: object) -> tuple[int, int | str]:
    text = str(node_id)
    return (0, int(text)) if text.isdigit() else (1, text)
