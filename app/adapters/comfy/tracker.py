"""Following one prompt through ComfyUI's websocket messages (pure: no I/O, no clock).

ComfyUI sends, for a prompt submitted with our client id: `execution_start`,
`execution_cached{nodes}`, then per node `progress_state{nodes: {id: {value, max,
state}}}` and `executing{node}`, `progress{value, max, node}` from nodes with a progress
bar (samplers), `executed{node, output}` from output nodes, and finally one of
`execution_success`, `execution_error`, `execution_interrupted`. `status` and
`execution_interrupted` are broadcast to every client, and a prompt without a client id
broadcasts its `progress_state`, so everything is filtered by `prompt_id`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.adapters.comfy.messages import ComfyOutput, PromptEnding, TerminalKind, outputs_from

#: Until the terminal message, progress stays below 1.0: the last node may still fail.
_MAX_RUNNING_FRACTION = 0.99

_TERMINAL_TYPES: dict[str, TerminalKind] = {
    "execution_success": "success",
    "execution_error": "error",
    "execution_interrupted": "interrupted",
}


@dataclass(frozen=True, slots=True)
class RenderProgress:
    """How far a render is, for the job's progress field."""

    #: 0..1, never decreasing during one run; 1.0 only once the prompt succeeded.
    fraction: float
    node_id: str | None
    node_type: str | None
    #: The running node's own progress (sampler steps), `value` of `max`.
    value: float
    max: float
    nodes_done: int
    #: Nodes expected to run: the workflow's nodes less those served from cache. Nodes
    #: that feed no output are skipped by ComfyUI and never counted done.
    nodes_total: int


class RunTracker:
    """The state of one prompt, updated message by message."""

    def __init__(self, prompt_id: str, workflow: Mapping[str, Any]) -> None:
        self.prompt_id = prompt_id
        self._class_types = {
            str(node_id): str(node.get("class_type"))
            for node_id, node in workflow.items()
            if isinstance(node, Mapping)
        }
        self.cached_nodes: set[str] = set()
        self.executed: dict[str, Any] = {}
        self.terminal: PromptEnding | None = None
        self._done: set[str] = set()
        self._current: str | None = None
        self._value = 0.0
        self._max = 1.0
        self._fraction = 0.0

    def handle(self, message: object) -> None:
        """Take one decoded websocket text message; anything not ours is ignored."""
        if not isinstance(message, Mapping) or self.terminal is not None:
            return
        kind = message.get("type")
        data = message.get("data")
        if not isinstance(data, Mapping) or data.get("prompt_id") != self.prompt_id:
            return
        if kind in _TERMINAL_TYPES:
            self.terminal = PromptEnding(_TERMINAL_TYPES[kind], data)
            if kind == "execution_success":
                self._fraction = 1.0
        elif kind == "execution_cached":
            nodes = data.get("nodes")
            if isinstance(nodes, list):
                self.cached_nodes.update(str(n) for n in nodes)
        elif kind == "executing":
            self._on_executing(data.get("node"))
        elif kind == "progress_state":
            self._on_progress_state(data.get("nodes"))
        elif kind == "progress":
            self._on_progress(data)
        elif kind == "executed":
            node, output = data.get("node"), data.get("output")
            if node is not None and isinstance(output, Mapping):
                self.executed[str(node)] = output

    def executed_outputs(self) -> list[ComfyOutput]:
        """Files reported by `executed` messages so far (history is authoritative)."""
        return outputs_from(self.executed)

    def progress(self) -> RenderProgress:
        """The progress as of the last message."""
        total = max(
            len(self._class_types) - len(self.cached_nodes & self._class_types.keys()),
            len(self._done) + (1 if self._current and self._current not in self._done else 0),
            1,
        )
        return RenderProgress(
            fraction=self._fraction,
            node_id=self._current,
            node_type=self._class_types.get(self._current) if self._current else None,
            value=self._value,
            max=self._max,
            nodes_done=len(self._done),
            nodes_total=total,
        )

    def _on_executing(self, node: object) -> None:
        if node is None:  # arrives after the terminal message; nothing left to run
            return
        node_id = str(node)
        if self._current is not None and self._current != node_id:
            self._mark_done(self._current)
        if node_id != self._current:
            self._current, self._value, self._max = node_id, 0.0, 1.0
        self._update()

    def _on_progress_state(self, nodes: object) -> None:
        if not isinstance(nodes, Mapping):
            return
        for node_id, state in nodes.items():
            if not isinstance(state, Mapping):
                continue
            node_id = str(state.get("display_node_id") or node_id)
            if node_id not in self._class_types:
                continue  # a node expanded at run time; its parent stands for it
            if state.get("state") == "finished":
                self._mark_done(node_id)
            elif state.get("state") == "running":
                self._current = node_id
                self._value, self._max = _number(state.get("value")), _number(state.get("max"))
        self._update()

    def _on_progress(self, data: Mapping[str, Any]) -> None:
        node = data.get("node")
        if node is not None and str(node) in self._class_types:
            self._current = str(node)
        self._value, self._max = _number(data.get("value")), _number(data.get("max"))
        self._update()

    def _mark_done(self, node_id: str) -> None:
        if node_id not in self.cached_nodes:
            self._done.add(node_id)

    def _update(self) -> None:
        progress = self.progress()
        running = 0.0
        if self._current is not None and self._current not in self._done and self._max > 0:
            running = min(max(self._value / self._max, 0.0), 1.0)
        fraction = (progress.nodes_done + running) / progress.nodes_total
        # Monotonic: a late cached list or an expanded node must not move the bar back.
        self._fraction = max(self._fraction, min(fraction, _MAX_RUNNING_FRACTION))


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
