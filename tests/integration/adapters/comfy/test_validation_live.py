"""Each validation rule: the same workflow refused (or accepted) by us and by ComfyUI's `/prompt`.

Our side is intake's `check_graph` against the catalog built from the target's own
`/object_info`; ComfyUI's side is its answer to `POST /prompt` (400 or 200). Against the
double always, and against a real ComfyUI when COMFYUI_URL is set (marker `comfyui`).
Where both answer with `node_errors`, the nodes and error types must be the same too.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from app.adapters.comfy.catalog import NodeCatalog
from app.adapters.comfy.workflow import bind_inputs
from app.core.config import Settings
from app.core.errors import InvalidNodes, InvalidWorkflow
from app.stages.intake import check_graph
from tests.integration.comfy_target import Target


def empty(width: object = 8, **extra: object) -> dict[str, Any]:
    inputs = {"width": width, "height": 8, "batch_size": 1, "color": 0x102030, **extra}
    return {"class_type": "EmptyImage", "inputs": inputs}


def preview(source: str, slot: int = 0) -> dict[str, Any]:
    return {"class_type": "PreviewImage", "inputs": {"images": [source, slot]}}


def blend(mode: object = "normal", factor: object = 0.5) -> dict[str, Any]:
    inputs = {"image1": ["1", 0], "image2": ["1", 0], "blend_factor": factor, "blend_mode": mode}
    return {"class_type": "ImageBlend", "inputs": inputs}


def scale(method: object = "bilinear") -> dict[str, Any]:
    inputs = {"image": ["1", 0], "upscale_method": method, "width": 4, "height": 4}
    return {"class_type": "ImageScale", "inputs": {**inputs, "crop": "disabled"}}


def blur(sigma: object) -> dict[str, Any]:
    inputs = {"image": ["1", 0], "blur_radius": 1, "sigma": sigma}
    return {"class_type": "ImageBlur", "inputs": inputs}


@dataclass
class Case:
    graph: dict[str, Any]
    accepted: bool
    #: The job's input names; a LoadImage case uploads each one first.
    inputs: list[str] = field(default_factory=list)
    real_only: bool = False
    #: ComfyUI answers 200 but lists `node_errors` (it would run only the valid outputs):
    #: our render refuses that answer, so we refuse the graph at submit.
    partial: bool = False


CASES: dict[str, Case] = {
    "valid": Case({"1": empty(), "2": preview("1")}, True),
    "required_input_missing": Case(
        {
            "1": {"class_type": "EmptyImage", "inputs": {"height": 8, "batch_size": 1}},
            "2": preview("1"),
        },
        False,
    ),
    "link_type_mismatch": Case(
        {
            "1": empty(),
            "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
            "3": preview("2"),
        },
        False,
    ),
    "star_input_takes_any_type": Case(
        {
            "1": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        },
        True,
    ),
    "int_below_min": Case({"1": empty(0), "2": preview("1")}, False),
    "int_above_max": Case({"1": empty(16385), "2": preview("1")}, False),
    "float_above_max": Case({"1": empty(), "2": blur(10.5), "3": preview("2")}, False),
    "number_strings_converted": Case({"1": empty("8"), "2": blur("0.5"), "3": preview("2")}, True),
    "number_string_not_a_number": Case({"1": empty("eight"), "2": preview("1")}, False),
    "listed_choice_not_listed": Case({"1": empty(), "2": scale("bogus"), "3": preview("2")}, False),
    "listed_choice_listed": Case({"1": empty(), "2": scale("area"), "3": preview("2")}, True),
    # A V3 "COMBO": ComfyUI's /prompt does not check the value (the node fails when run).
    "v3_combo_not_checked": Case({"1": empty(), "2": blend("bogus"), "3": preview("2")}, True),
    "wrapped_value": Case(
        {"1": empty(), "2": blend(factor={"__value__": 0.25}), "3": preview("2")}, True
    ),
    "undeclared_inputs_ignored": Case(
        {"1": empty(control_after_generate="fixed", unique_id="x"), "2": preview("1")}, True
    ),
    "no_output_node": Case({"1": empty()}, False),
    "unknown_class_type": Case(
        {"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": preview("1")}, False
    ),
    "bad_link_form": Case(
        {"1": empty(), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1"]}}}, False
    ),
    "one_output_broken": Case(
        {"1": empty(), "2": preview("1"), "3": empty(0), "4": preview("3")}, False, partial=True
    ),
    "unreachable_node_not_checked": Case({"1": empty(), "2": preview("1"), "3": empty(0)}, True),
    "load_image_not_an_input": Case(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "missing-4f1c.png"}},
            "2": preview("1"),
        },
        False,
    ),
    "load_image_an_input": Case(
        {"1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}}, "2": preview("1")},
        True,
        inputs=["face.png"],
    ),
    "model_not_shipped": Case(
        {
            "1": {
                "class_type": "CheckpointLoaderSimple",
                "inputs": {"ckpt_name": "nope-4f1c.safetensors"},
            },
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        },
        False,
        real_only=True,  # the double has no model loaders
    ),
}


@pytest.fixture
def catalog(comfy_target: Target) -> Iterator[NodeCatalog]:
    info = httpx.get(f"{comfy_target.url}/object_info", timeout=60).json()
    yield NodeCatalog.from_object_info(info)
    comfy_target.idle()  # what was accepted ran; leave ComfyUI as we found it


def ours(case: Case, catalog: NodeCatalog) -> InvalidWorkflow | None:
    try:
        check_graph(case.graph, catalog, case.inputs, Settings())
    except InvalidWorkflow as exc:
        return exc
    return None


def comfys(case: Case, target: Target) -> httpx.Response:
    folder = f"t-{uuid.uuid4().hex[:8]}"
    bound: dict[str, str] = {}
    for name in case.inputs:
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
        stored = httpx.post(
            f"{target.url}/upload/image",
            files={"image": (name, buffer.getvalue(), "image/png")},
            data={"overwrite": "true", "type": "input", "subfolder": folder},
            timeout=30,
        ).json()
        bound[name] = f"{stored['subfolder']}/{stored['name']}"
    # As render sends it: the job's input names bound to its own uploaded copies.
    body = {"prompt": bind_inputs(case.graph, bound), "client_id": "validation-test"}
    return httpx.post(f"{target.url}/prompt", json=body, timeout=60)


@pytest.mark.parametrize("name", list(CASES))
def test_we_refuse_what_comfy_refuses_and_accept_what_it_accepts(
    name: str, comfy_target: Target, catalog: NodeCatalog
) -> None:
    case = CASES[name]
    if case.real_only and not comfy_target.is_real:
        pytest.skip("the double has no such node")
    refused = ours(case, catalog)
    answer = comfys(case, comfy_target)

    assert (refused is None) is case.accepted, f"we answered {refused}"
    comfy_ok = case.accepted or case.partial
    assert (answer.status_code == 200) is comfy_ok, f"ComfyUI answered {answer.text}"
    comfy_errors = answer.json().get("node_errors") or {}
    if answer.status_code == 200:
        assert bool(comfy_errors) is case.partial, comfy_errors
    if isinstance(refused, InvalidNodes):
        assert kinds(refused.node_errors) == kinds(comfy_errors)


def kinds(node_errors: dict[str, Any]) -> dict[str, list[str]]:
    return {
        node_id: sorted(error["type"] for error in entry["errors"])
        for node_id, entry in node_errors.items()
    }
