"""Hide CUDA from ComfyUI while Modal snapshots the container, and give it back after.

Loaded once per ComfyUI process under a fixed module name (see `load_device_module` in
`prestartup_script.py` and `__init__.py`), so the prestartup script and the node package
share `STATE`. The functions take the modules they change as arguments, so tests can
hand in small stand-ins for `torch`, `comfy.cli_args.args` and `comfy.model_management`.

Written against ComfyUI's `comfy/model_management.py` at the commit pinned in
`app/deploy/modal/manifest.py`: the module-level globals restored below are the ones that
commit computes at import time from the device. Re-check them when bumping ComfyUI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

#: Environment variable the render container sets on the ComfyUI process.
MODE_ENV = "SNAPSHOT_HELPER_MODE"
#: Start on the CPU with CUDA hidden; switch to the GPU when asked after restore.
CPU_UNTIL_RESTORE = "cpu_until_restore"
#: The route the render container calls after a restore (POST), and a status route (GET).
SELECT_DEVICE_ROUTE = "/snapshot_helper/select_device"
STATUS_ROUTE = "/snapshot_helper/status"
#: ComfyUI's batch limit for torch SDPA on NVIDIA (comfy/ldm/modules/attention.py).
NVIDIA_SDP_BATCH_LIMIT = 2**15


@dataclass
class HelperState:
    """What was changed before the snapshot, so it can be undone exactly."""

    hidden: bool = False
    restored: bool = False
    cpu_before: bool = False
    attention_before: bool = False
    is_available: Any = None
    device_count: Any = None


STATE = HelperState()


def mode(environ: dict[str, str] | None = None) -> str:
    """The helper's mode from the process environment ("" when inactive)."""
    env = os.environ if environ is None else environ
    return env.get(MODE_ENV, "")


def _no_cuda() -> bool:
    return False


def _no_devices() -> int:
    return 0


def hide_cuda(torch: Any, args: Any) -> None:
    """Make ComfyUI start on the CPU and make every CUDA probe answer "no GPU".

    Runs before ComfyUI imports `comfy.model_management`, which otherwise calls
    `torch.cuda.current_device()` at import and would initialise CUDA inside the snapshot.
    Probes by other code are answered in Python, so torch never caches "0 devices" in C++.
    PyTorch attention is chosen up front because ComfyUI binds its attention function at
    import; it is what ComfyUI picks itself on NVIDIA with torch 2.
    """
    if STATE.hidden:
        return
    STATE.cpu_before = bool(args.cpu)
    STATE.attention_before = bool(args.use_pytorch_cross_attention)
    STATE.is_available = torch.cuda.is_available
    STATE.device_count = torch.cuda.device_count
    args.cpu = True
    if not (args.use_split_cross_attention or args.use_quad_cross_attention):
        args.use_pytorch_cross_attention = True
    torch.cuda.is_available = _no_cuda
    torch.cuda.device_count = _no_devices
    STATE.hidden = True
    STATE.restored = False


def restore_cuda(torch: Any, args: Any, mm: Any, attention: Any = None) -> dict[str, Any]:
    """Give CUDA back and move ComfyUI's device choice to the GPU; safe to call twice."""
    if not STATE.hidden:
        return {"switched": False, "device": str(mm.get_torch_device()), "mode": "native"}
    torch.cuda.is_available = STATE.is_available
    torch.cuda.device_count = STATE.device_count
    args.cpu = STATE.cpu_before
    args.use_pytorch_cross_attention = STATE.attention_before
    STATE.hidden = False
    STATE.restored = True
    if args.cpu or not torch.cuda.is_available():
        return {"switched": False, "device": str(mm.get_torch_device()), "mode": "cpu"}
    _switch_to_gpu(torch, args, mm, attention)
    return {"switched": True, "device": str(mm.get_torch_device()), "mode": "gpu"}


def _switch_to_gpu(torch: Any, args: Any, mm: Any, attention: Any) -> None:
    # Mirrors what comfy/model_management.py computes at import on a GPU machine.
    mm.cpu_state = mm.CPUState.GPU
    vram = mm.VRAMState.NORMAL_VRAM
    if args.highvram or args.gpu_only:
        vram = mm.VRAMState.HIGH_VRAM
    if getattr(mm, "lowvram_available", False) and mm.set_vram_to in (
        mm.VRAMState.LOW_VRAM,
        mm.VRAMState.NO_VRAM,
    ):
        vram = mm.set_vram_to
    mm.vram_state = vram
    mm.total_vram = mm.get_total_memory(mm.get_torch_device()) / (1024 * 1024)
    if mm.is_nvidia():
        mm.MIN_WEIGHT_MEMORY_RATIO = 0.0
        if attention is not None and hasattr(attention, "SDP_BATCH_LIMIT"):
            attention.SDP_BATCH_LIMIT = NVIDIA_SDP_BATCH_LIMIT


def status() -> dict[str, Any]:
    """The helper's state, for the status route and the logs."""
    return {"mode": mode(), "hidden": STATE.hidden, "restored": STATE.restored}


def reset_for_tests() -> None:
    """Forget what was changed (tests only; a real process never needs it)."""
    fresh = HelperState()
    for name in HelperState.__dataclass_fields__:
        setattr(STATE, name, getattr(fresh, name))
