"""ComfyUI runs this before it imports torch or its own device code (see main.py).

With `SNAPSHOT_HELPER_MODE=cpu_until_restore` in the environment it hides CUDA, so
ComfyUI starts on the CPU while Modal takes the memory snapshot; otherwise it does
nothing. See `device.py` for what is changed and `__init__.py` for how it is undone.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

logger = logging.getLogger("snapshot_helper")
DEVICE_MODULE = "comfyui_saas_snapshot_device"


def load_device_module() -> ModuleType:
    """`device.py`, loaded once per process under a fixed name so both entry points share it."""
    module = sys.modules.get(DEVICE_MODULE)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(
        DEVICE_MODULE, Path(__file__).with_name("device.py")
    )
    if spec is None or spec.loader is None:
        raise ImportError("snapshot_helper: device.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[DEVICE_MODULE] = module
    spec.loader.exec_module(module)
    return module


def run() -> bool:
    """Hide CUDA if the helper's mode asks for it; True if it did."""
    device = load_device_module()
    if device.mode() != device.CPU_UNTIL_RESTORE:
        return False
    import torch  # ComfyUI warns that torch is imported early; that is intended here.
    from comfy.cli_args import args

    device.hide_cuda(torch, args)
    logger.info("snapshot_helper: CUDA hidden until %s is called", device.SELECT_DEVICE_ROUTE)
    return True


run()
