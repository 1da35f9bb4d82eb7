"""ComfyUI custom node that keeps CUDA untouched while Modal takes a memory snapshot.

How it behaves, in order:

1. The render container starts ComfyUI inside `@modal.enter(snap=True)` with
   `SNAPSHOT_HELPER_MODE=cpu_until_restore`. Modal runs that phase without a GPU.
2. `prestartup_script.py` runs before ComfyUI imports torch's device code: it sets
   ComfyUI's `--cpu` flag, chooses PyTorch attention (what ComfyUI picks on NVIDIA) and
   makes `torch.cuda.is_available()` / `device_count()` answer "no GPU" in Python. CUDA is
   never initialised, so the snapshot holds a clean, CPU-only ComfyUI with all nodes
   imported.
3. After a restore, `@modal.enter(snap=False)` POSTs `/snapshot_helper/select_device`.
   The route puts the torch functions and flags back and moves ComfyUI's device state
   (`cpu_state`, `vram_state`, `total_vram`, NVIDIA tweaks) to the GPU, the same values
   ComfyUI computes at import on a GPU machine. The first job then initialises CUDA.
4. Without the mode variable (no snapshot, or Modal's GPU snapshots, which run the
   snapshot phase with the GPU attached) nothing is changed and the route answers
   `{"switched": false, "mode": "native"}`.

`GET /snapshot_helper/status` reports the state. Third-party nodes that touch CUDA at
import still break snapshots; pin only nodes that do not (docs/deploy-modal.md).
The package defines no nodes.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger("snapshot_helper")
NODE_CLASS_MAPPINGS: dict[str, object] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

_DEVICE_MODULE = "comfyui_saas_snapshot_device"


def _device() -> ModuleType:
    # Same fixed name as prestartup_script.py: the state it recorded lives there.
    module = sys.modules.get(_DEVICE_MODULE)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(
        _DEVICE_MODULE, Path(__file__).with_name("device.py")
    )
    if spec is None or spec.loader is None:
        raise ImportError("snapshot_helper: device.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_DEVICE_MODULE] = module
    spec.loader.exec_module(module)
    return module


def select_device() -> dict[str, Any]:
    """Undo the snapshot-time changes and put ComfyUI on the GPU (what the route runs)."""
    import torch
    from comfy import model_management
    from comfy.cli_args import args

    attention = sys.modules.get("comfy.ldm.modules.attention")
    result: dict[str, Any] = _device().restore_cuda(torch, args, model_management, attention)
    logger.info("snapshot_helper: select_device %s", result)
    return result


def _register_routes() -> bool:
    try:
        from server import PromptServer
    except ImportError:  # imported outside ComfyUI (packaging, tests without a stub)
        return False
    from aiohttp import web

    device = _device()
    routes = PromptServer.instance.routes

    @routes.post(device.SELECT_DEVICE_ROUTE)
    async def _select_device(request: web.Request) -> web.Response:
        try:
            return web.json_response(select_device())
        except Exception as exc:  # the caller decides; the server must stay up
            logger.exception("snapshot_helper: select_device failed")
            return web.json_response({"error": type(exc).__name__}, status=500)

    @routes.get(device.STATUS_ROUTE)
    async def _status(request: web.Request) -> web.Response:
        return web.json_response(device.status())

    return True


ROUTES_REGISTERED = _register_routes()
