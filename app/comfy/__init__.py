"""The render side's view of ComfyUI: client, workflow checks and the node catalog."""

from __future__ import annotations

from app.comfy.catalog import NodeCatalog, NodeSpec
from app.comfy.client import ComfyClient, RenderResult
from app.comfy.messages import ComfyOutput
from app.comfy.tracker import RenderProgress
from app.comfy.workflow import bind_inputs, check_workflow, referenced_inputs

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
