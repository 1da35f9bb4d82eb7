"""snapshot_helper loads as a ComfyUI custom node (stub `comfy`, `server`, `torch`).

The stand-in for `comfy.model_management` does what the pinned ComfyUI does at import:
pick the device from `args.cpu` and, on the GPU path, call `torch.cuda.current_device()`,
which is what must not happen inside a CPU memory snapshot.
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.paths import REPO_ROOT

HELPER_DIR = REPO_ROOT / "snapshot_helper"
DEVICE_MODULE = "comfyui_saas_snapshot_device"


class CPUState(enum.Enum):
    GPU = 0
    CPU = 1


class VRAMState(enum.Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4


class FakeCuda:
    """torch.cuda with a record of every call that would initialise CUDA."""

    def __init__(self) -> None:
        self.initialised = 0

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def current_device(self) -> int:
        self.initialised += 1
        return 0


def _model_management(torch: Any, args: Any) -> Any:
    """What comfy/model_management.py computes at import, reduced to the device parts.

    A stub module filled in attribute by attribute (and patched by tests), hence Any.
    """
    mm: Any = types.ModuleType("comfy.model_management")
    mm.CPUState = CPUState
    mm.VRAMState = VRAMState
    mm.lowvram_available = True
    mm.set_vram_to = VRAMState.NORMAL_VRAM
    mm.cpu_state = CPUState.CPU if args.cpu else CPUState.GPU
    mm.MIN_WEIGHT_MEMORY_RATIO = 0.4

    def get_torch_device() -> str:
        if mm.cpu_state == CPUState.CPU:
            return "cpu"
        return f"cuda:{torch.cuda.current_device()}"

    def get_total_memory(dev: str) -> float:
        return 24 * 1024**3 if dev.startswith("cuda") else 8 * 1024**3

    def is_nvidia() -> bool:
        return mm.cpu_state == CPUState.GPU and bool(torch.version.cuda)

    mm.get_torch_device = get_torch_device
    mm.get_total_memory = get_total_memory
    mm.is_nvidia = is_nvidia
    mm.total_vram = get_total_memory(get_torch_device()) / (1024 * 1024)
    mm.vram_state = VRAMState.NORMAL_VRAM if mm.cpu_state == CPUState.GPU else VRAMState.DISABLED
    return mm


@pytest.fixture
def comfy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.SimpleNamespace]:
    """Stub `torch`, `comfy.cli_args` and `server` modules, as ComfyUI's process has them."""
    cuda = FakeCuda()
    torch = types.ModuleType("torch")
    torch.cuda = cuda  # type: ignore[attr-defined]
    torch.version = types.SimpleNamespace(cuda="12.8")  # type: ignore[attr-defined]
    args = types.SimpleNamespace(
        cpu=False,
        use_pytorch_cross_attention=False,
        use_split_cross_attention=False,
        use_quad_cross_attention=False,
        highvram=False,
        gpu_only=False,
    )
    comfy = types.ModuleType("comfy")
    comfy.__path__ = []
    cli_args = types.ModuleType("comfy.cli_args")
    cli_args.args = args  # type: ignore[attr-defined]
    comfy.cli_args = cli_args  # type: ignore[attr-defined]
    routes = web.RouteTableDef()
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(  # type: ignore[attr-defined]
        instance=types.SimpleNamespace(routes=routes)
    )
    for name, module in {
        "torch": torch,
        "comfy": comfy,
        "comfy.cli_args": cli_args,
        "server": server,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, DEVICE_MODULE, raising=False)
    yield types.SimpleNamespace(torch=torch, cuda=cuda, args=args, comfy=comfy, routes=routes)
    sys.modules.pop(DEVICE_MODULE, None)
    sys.modules.pop("comfy.model_management", None)
    sys.modules.pop("comfy.ldm.modules.attention", None)


def _run_prestartup() -> None:
    # As ComfyUI's main.py does: a module named after the file path, not in sys.modules.
    path = HELPER_DIR / "prestartup_script.py"
    spec = importlib.util.spec_from_file_location(str(path.with_suffix("")), path)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _import_comfy_core(env: types.SimpleNamespace) -> Any:
    mm = _model_management(env.torch, env.args)
    sys.modules["comfy.model_management"] = mm
    env.comfy.model_management = mm
    attention = types.ModuleType("comfy.ldm.modules.attention")
    attention.SDP_BATCH_LIMIT = 2**31  # type: ignore[attr-defined]
    sys.modules["comfy.ldm.modules.attention"] = attention
    return mm


def _load_node_package() -> types.ModuleType:
    # As ComfyUI's nodes.load_custom_node does for a folder.
    init = HELPER_DIR / "__init__.py"
    name = str(HELPER_DIR).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(HELPER_DIR)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def _route(routes: web.RouteTableDef, method: str, path: str) -> Any:
    for route in routes:
        assert isinstance(route, web.RouteDef)
        if route.method == method and route.path == path:
            return route.handler
    raise AssertionError(f"no {method} {path}")


def _call(handler: Any) -> tuple[int, dict[str, Any]]:
    response = asyncio.run(handler(None))
    return response.status, json.loads(response.body)


def test_snapshot_mode_hides_cuda_then_select_device_restores_the_gpu(
    comfy_env: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: the render container started ComfyUI for a CPU memory snapshot
    monkeypatch.setenv("SNAPSHOT_HELPER_MODE", "cpu_until_restore")
    original_is_available = comfy_env.cuda.is_available
    # When: ComfyUI runs prestartup scripts, imports its core, then loads custom nodes
    _run_prestartup()
    mm = _import_comfy_core(comfy_env)
    package = _load_node_package()
    # Then: ComfyUI is on the CPU and nothing touched CUDA
    assert comfy_env.args.cpu is True
    assert comfy_env.args.use_pytorch_cross_attention is True
    assert comfy_env.torch.cuda.is_available() is False
    assert comfy_env.torch.cuda.device_count() == 0
    assert comfy_env.cuda.initialised == 0
    assert mm.cpu_state == CPUState.CPU and mm.vram_state == VRAMState.DISABLED
    assert package.NODE_CLASS_MAPPINGS == {} and package.ROUTES_REGISTERED is True
    status, body = _call(_route(comfy_env.routes, "GET", "/snapshot_helper/status"))
    assert (status, body["hidden"], body["mode"]) == (200, True, "cpu_until_restore")

    # When: after the restore, the container asks for the GPU
    status, body = _call(_route(comfy_env.routes, "POST", "/snapshot_helper/select_device"))
    # Then: CUDA is back and ComfyUI's device state is the GPU one
    assert (status, body) == (200, {"switched": True, "device": "cuda:0", "mode": "gpu"})
    assert comfy_env.torch.cuda.is_available == original_is_available
    assert comfy_env.args.cpu is False
    assert comfy_env.args.use_pytorch_cross_attention is False
    assert mm.cpu_state == CPUState.GPU
    assert mm.vram_state == VRAMState.NORMAL_VRAM
    assert mm.total_vram == 24 * 1024
    assert mm.MIN_WEIGHT_MEMORY_RATIO == 0.0
    assert sys.modules["comfy.ldm.modules.attention"].SDP_BATCH_LIMIT == 2**15
    assert comfy_env.cuda.initialised >= 1  # first touched after the restore

    # And: calling it again changes nothing
    status, body = _call(_route(comfy_env.routes, "POST", "/snapshot_helper/select_device"))
    assert (status, body["switched"], body["mode"]) == (200, False, "native")


def test_without_the_mode_nothing_is_changed(
    comfy_env: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SNAPSHOT_HELPER_MODE", raising=False)
    _run_prestartup()
    mm = _import_comfy_core(comfy_env)
    _load_node_package()
    assert comfy_env.args.cpu is False
    assert comfy_env.torch.cuda.is_available() is True
    assert mm.cpu_state == CPUState.GPU
    status, body = _call(_route(comfy_env.routes, "POST", "/snapshot_helper/select_device"))
    assert (status, body) == (200, {"switched": False, "device": "cuda:0", "mode": "native"})


def test_low_vram_choice_survives_the_switch(
    comfy_env: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPSHOT_HELPER_MODE", "cpu_until_restore")
    _run_prestartup()
    mm = _import_comfy_core(comfy_env)
    mm.set_vram_to = VRAMState.LOW_VRAM  # what --lowvram sets at import
    _load_node_package()
    _call(_route(comfy_env.routes, "POST", "/snapshot_helper/select_device"))
    assert mm.vram_state == VRAMState.LOW_VRAM


def test_a_failed_switch_answers_500_and_keeps_the_server_up(
    comfy_env: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPSHOT_HELPER_MODE", "cpu_until_restore")
    _run_prestartup()
    mm = _import_comfy_core(comfy_env)
    _load_node_package()

    def broken(dev: str) -> float:
        raise RuntimeError("CUDA error: no device")

    mm.get_total_memory = broken
    status, body = _call(_route(comfy_env.routes, "POST", "/snapshot_helper/select_device"))
    assert (status, body) == (500, {"error": "RuntimeError"})


def test_the_package_imports_outside_comfyui() -> None:
    sys.modules.pop(DEVICE_MODULE, None)
    assert "server" not in sys.modules
    package = _load_node_package()
    assert package.ROUTES_REGISTERED is False
    sys.modules.pop(DEVICE_MODULE, None)
