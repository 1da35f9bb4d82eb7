"""The render side's view of ComfyUI: client, workflow checks and the node catalog."""

from __future__ import annotations

from app.adapters.comfy.catalog import NodeCatalog, NodeSpec
from app.adapters.comfy.client import ComfyClient, RenderResult
from app.adapters.comfy.messages import ComfyOutput
from app.adapters.comfy.tracker import RenderProgress
from app.adapters.comfy.workflow import bind_inputs, check_workflow, referenced_inputs

__all__ = [
    "ComfyClient",
    "ComfyOutput",
    "NodeCatalog",
    "NodeSpec",
    "RenderProgress",
    "RenderResult",
    "bind_inputs",
    "check_workflow",
    "referenced_inputs",
]
