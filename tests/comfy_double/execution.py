"""Running one queued prompt the way upstream's `PromptExecutor` reports it.

Per node: `progress_state` (running), `executing`, the interrupt check, the work,
`executed` (output nodes), `progress_state` (finished). Around them `execution_start`,
`execution_cached`, then `execution_success` / `execution_error` /
`execution_interrupted`; those "add_message" events also go to the history's
`status.messages`. Messages go to the prompt's client id; without one, only
`progress_state` and `execution_interrupted` are sent, to every socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import traceback
from typing import TYPE_CHECKING, Any

from tests.comfy_double.nodes import NEVER_CACHED, NODES, NodeContext, NodeResult, is_changed

if TYPE_CHECKING:
    from tests.comfy_double.server import ComfyDouble, QueueItem


class Interrupted(Exception):
    pass


class Crashed(Exception):
    pass


class NodeFailed(Exception):
    def __init__(self, node_id: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.node_id = node_id
        self.exc = exc


class Execution:
    def __init__(self, double: ComfyDouble, item: QueueItem) -> None:
        self.double = double
        self.item = item
        self.prompt = item.prompt
        self.prompt_id = item.prompt_id
        self.client_id: str | None = item.extra_data.get("client_id")
        self.status_messages: list[list[Any]] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.results: dict[str, NodeResult] = {}
        self.ui: dict[str, Any] = {}
        self.signatures: dict[str, str] = {}

    async def add_message(self, kind: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append([kind, data])
        if self.client_id is not None or broadcast:
            await self.double.send(kind, data, self.client_id)

    async def to_client(self, kind: str, data: dict[str, Any] | bytes) -> None:
        if self.client_id is not None:
            await self.double.send(kind, data, self.client_id)

    async def progress_state(self, node_id: str, state: str, value: float, max_: float) -> None:
        self.states[node_id] = {
            "value": value,
            "max": max_,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        nodes = json.loads(json.dumps(self.states))
        await self.double.send(
            "progress_state", {"prompt_id": self.prompt_id, "nodes": nodes}, self.client_id
        )

    async def run(self) -> None:
        await self.add_message("execution_start", {"prompt_id": self.prompt_id}, False)
        cache = self.double._cache if self.double.cache else {}
        cached = [
            node_id
            for node_id in self.prompt
            if self.prompt[node_id]["class_type"] not in NEVER_CACHED
            and self.signature(node_id) in cache
        ]
        await self.add_message(
            "execution_cached", {"nodes": cached, "prompt_id": self.prompt_id}, False
        )
        data: dict[str, Any]
        outcome, data = "success", {"prompt_id": self.prompt_id}
        try:
            for output in self.item.outputs:
                await self.need(output, cache, set(cached))
        except Interrupted as exc:
            outcome = "interrupted"
            node_id = str(exc)
            data = {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": self.prompt[node_id]["class_type"],
                "executed": list(self.executed),
            }
        except NodeFailed as failed:
            outcome = "error"
            data = self.error_data(failed)
        if outcome == "success":
            await self.add_message("execution_success", {"prompt_id": self.prompt_id}, False)
        elif outcome == "error":
            await self.add_message("execution_error", data, False)
        else:
            await self.add_message("execution_interrupted", data, True)
        self.double._cache = {self.signatures[n]: r for n, r in self.results.items()}
        self.double.history[self.prompt_id] = {
            "prompt": self.item.as_list(),
            "outputs": self.ui if outcome == "success" else {},
            "status": {
                "status_str": "success" if outcome == "success" else "error",
                "completed": outcome == "success",
                "messages": self.status_messages,
            },
            "meta": {
                node_id: {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                for node_id in self.ui
            }
            if outcome == "success"
            else {},
        }

    def signature(self, node_id: str) -> str:
        if node_id not in self.signatures:
            node = self.prompt[node_id]
            parts: list[Any] = [
                node["class_type"],
                is_changed(node["class_type"], node["inputs"], self.double.input_dir),
            ]
            for name in sorted(node["inputs"]):
                value = node["inputs"][name]
                if isinstance(value, list):
                    parts.append([name, self.signature(value[0]), value[1]])
                else:
                    parts.append([name, value])
            raw = json.dumps(parts, sort_keys=True, default=str)
            self.signatures[node_id] = hashlib.sha256(raw.encode()).hexdigest()
        return self.signatures[node_id]

    async def need(self, node_id: str, cache: dict[str, NodeResult], cached: set[str]) -> Any:
        if node_id in self.results:
            return self.results[node_id]
        node = self.prompt[node_id]
        class_type = node["class_type"]
        if node_id in cached:
            result = cache[self.signature(node_id)]
            self.results[node_id] = result
            if result.ui is not None:
                self.ui[node_id] = result.ui
                await self.to_client(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": result.ui,
                        "prompt_id": self.prompt_id,
                    },
                )
                await self.progress_state(node_id, "finished", 1, 1)
            return result
        kwargs: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                source = await self.need(value[0], cache, cached)
                kwargs[name] = source.outputs[value[1]]
            else:
                kwargs[name] = value
        await self.progress_state(node_id, "running", 0.0, 1.0)
        await self.to_client(
            "executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id}
        )
        if self.double.crash_at_node == node_id:
            await self.double._crash()
        if self.double.drop_ws_at_node == node_id:
            self.double.drop_ws_at_node = None
            for ws in list(self.double.sockets.values()):
                await ws.close()
        if self.double._interrupt:
            raise Interrupted(node_id)
        delay_s = self.double.node_delay_s.get(class_type, 0.0)
        if delay_s:
            await asyncio.sleep(delay_s)  # a node runs to its end, as upstream
        ctx = NodeContext(
            input_dir=self.double.input_dir,
            output_dir=self.double.output_dir,
            temp_dir=self.double.temp_dir,
            prompt=self.prompt,
            node_id=node_id,
        )
        declared = self.double.object_info[class_type]["input"]
        known = {*declared.get("required", {}), *declared.get("optional", {})}
        try:
            result = NODES[class_type](ctx, **{k: v for k, v in kwargs.items() if k in known})
        except Exception as exc:
            raise NodeFailed(node_id, exc) from exc
        for index, frame in enumerate(ctx.binary_frames):
            value, max_ = ctx.progress[index]
            await self.progress_state(node_id, "running", value, max_)
            await self.to_client(
                "progress",
                {"value": value, "max": max_, "prompt_id": self.prompt_id, "node": node_id},
            )
            await self.to_client("binary", frame)
        self.results[node_id] = result
        self.executed.append(node_id)
        if result.ui is not None:
            self.ui[node_id] = result.ui
            await self.to_client(
                "executed",
                {
                    "node": node_id,
                    "display_node": node_id,
                    "output": result.ui,
                    "prompt_id": self.prompt_id,
                },
            )
        await self.progress_state(node_id, "finished", 1.0, 1.0)
        return result

    def error_data(self, failed: NodeFailed) -> dict[str, Any]:
        exc = failed.exc
        return {
            "prompt_id": self.prompt_id,
            "node_id": failed.node_id,
            "node_type": self.prompt[failed.node_id]["class_type"],
            "executed": list(self.executed),
            "exception_message": str(exc),
            "exception_type": type(exc).__name__,
            "traceback": traceback.format_tb(exc.__traceback__),
            "current_inputs": {},
            "current_outputs": list(self.results),
        }
