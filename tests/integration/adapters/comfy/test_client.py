"""The ComfyUI client against the double and, when COMFYUI_URL is set, a real ComfyUI."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.adapters.comfy import ComfyClient, RenderProgress, RenderResult
from app.core.errors import (
    ComfyUnavailable,
    InvalidWorkflow,
    RenderCancelled,
    RenderFailed,
    RenderTimeout,
)
from tests.integration.comfy_target import (
    Target,
    blend_error_workflow,
    color,
    invert_workflow,
    new_id,
    slow_workflow,
)


def never() -> bool:
    return False


def run(
    client: ComfyClient, workflow: dict[str, Any], *, timeout_s: float = 60.0, **kwargs: Any
) -> tuple[RenderResult, list[RenderProgress]]:
    reports: list[RenderProgress] = []
    options: dict[str, Any] = {
        "prompt_id": new_id(),
        "deadline_s": time.time() + timeout_s,
        "should_cancel": never,
        "on_progress": reports.append,
        "progress_interval_s": 0.0,
    }
    options.update(kwargs)
    return client.run(workflow, **options), reports


@pytest.fixture
def client(comfy_target: Target) -> Iterator[ComfyClient]:
    with ComfyClient(comfy_target.url, unavailable_grace_s=1.0) as client:
        yield client


def test_health_and_object_info(client: ComfyClient) -> None:
    stats = client.health()
    info = client.object_info()

    assert "comfyui_version" in stats["system"]
    assert info["SaveImage"]["output_node"] is True
    assert info["EmptyImage"]["output"] == ["IMAGE"]


def test_success_reports_progress_and_downloads_outputs(
    client: ComfyClient, comfy_target: Target, tmp_path: Path
) -> None:
    # Given a 3-node graph with a colour no earlier run used
    rgb = color()
    workflow = invert_workflow(rgb, size=40)

    # When it runs
    result, reports = run(client, workflow)

    # Then one saved PNG comes back, inverted, and progress climbed to 1.0
    assert [(o.node_id, o.type, o.kind) for o in result.outputs] == [("3", "output", "images")]
    assert result.cached is False
    size = client.download(result.outputs[0], tmp_path / "out.png")
    assert size == (tmp_path / "out.png").stat().st_size > 0
    with Image.open(tmp_path / "out.png") as img:
        assert img.size == (40, 40)
        pixel = img.convert("RGB").getpixel((0, 0))
        assert isinstance(pixel, tuple)
        r, g, b = pixel
    expected = (255 - (rgb >> 16), 255 - ((rgb >> 8) & 0xFF), 255 - (rgb & 0xFF))
    # Upstream goes through float32 and truncates back to bytes: allow one step.
    assert all(abs(got - want) <= 1 for got, want in zip((r, g, b), expected, strict=True))
    fractions = [p.fraction for p in reports]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert max(fractions[:-1]) < 1.0
    assert {p.node_id for p in reports} - {None} <= set(workflow)
    assert reports[-1].nodes_done == reports[-1].nodes_total == 3


def test_identical_rerun_is_reported_cached(client: ComfyClient) -> None:
    workflow = invert_workflow(color())
    first, _ = run(client, workflow)

    again, _ = run(client, workflow)

    assert again.cached is True
    assert again.outputs == first.outputs


def test_upload_then_load_image(client: ComfyClient, tmp_path: Path) -> None:
    # Given an input uploaded into a per-job subfolder
    job = f"t-{new_id()[:8]}"
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (color() & 0xFF, 10, 20)).save(buffer, format="PNG")
    name = client.upload_input(buffer.getvalue(), "face.png", job)
    assert name == f"{job}/face.png"

    # When a workflow loads it, scales it and saves into the same subfolder
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "bilinear",
                "width": 40,
                "height": 30,
                "crop": "disabled",
            },
        },
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": f"{job}/out"},
        },
    }
    result, _ = run(client, workflow)

    # Then the output is in that subfolder, at the new size
    [output] = result.outputs
    assert output.subfolder == job
    client.download(output, tmp_path / "scaled.png")
    with Image.open(tmp_path / "scaled.png") as img:
        assert img.size == (40, 30)


def test_preview_only_workflow_delivers_temp_files(client: ComfyClient, tmp_path: Path) -> None:
    workflow = invert_workflow(color())
    workflow["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}

    result, _ = run(client, workflow)

    assert [o.type for o in result.outputs] == ["temp"]
    assert client.download(result.outputs[0], tmp_path / "preview.png") > 0


def test_websocket_image_frames_are_ignored(client: ComfyClient) -> None:
    # SaveImageWebsocket sends its images as binary frames and saves no file.
    workflow = invert_workflow(color())
    workflow["3"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}

    result, reports = run(client, workflow)

    assert result.outputs == []
    assert reports[-1].fraction == 1.0


def test_validation_error_names_node_type_and_problem(client: ComfyClient) -> None:
    workflow = invert_workflow(color())
    del workflow["1"]["inputs"]["height"]

    with pytest.raises(InvalidWorkflow) as caught:
        run(client, workflow)

    message = caught.value.message
    assert "node 1 (EmptyImage)" in message
    assert "input 'height': a required input is missing" in message
    assert "Traceback" not in message


def test_unknown_node_class_is_invalid(client: ComfyClient) -> None:
    workflow = invert_workflow(color())
    workflow["2"]["class_type"] = "NoSuchNode"

    with pytest.raises(InvalidWorkflow, match="a node's type is not installed on this server"):
        run(client, workflow)


def test_link_to_missing_node_is_invalid_without_traceback(client: ComfyClient) -> None:
    workflow = invert_workflow(color())
    workflow["3"]["inputs"]["images"] = ["99", 0]

    with pytest.raises(InvalidWorkflow) as caught:
        run(client, workflow)

    assert "node 3 (SaveImage)" in caught.value.message
    assert 'File "' not in caught.value.message


def test_partly_invalid_workflow_is_refused(client: ComfyClient, comfy_target: Target) -> None:
    # ComfyUI answers 200 and runs only the valid outputs; we refuse the whole thing.
    workflow = invert_workflow(color())
    workflow["4"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["2", 0], "filename_prefix": "y"},
    }
    workflow["5"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0},
    }
    workflow["6"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["5", 0], "filename_prefix": "x"},
    }

    with pytest.raises(
        InvalidWorkflow, match=r"node 5 \(EmptyImage\): input 'width': .*below the minimum"
    ):
        run(client, workflow)
    comfy_target.idle()


def test_runtime_error_carries_node_id_and_type(client: ComfyClient) -> None:
    with pytest.raises(RenderFailed) as caught:
        run(client, blend_error_workflow(color()))

    error = caught.value
    assert (error.node_id, error.node_type) == ("3", "ImageBlend")
    assert error.message.startswith("node 3 (ImageBlend) failed: RuntimeError: ")
    assert "must match the size of tensor b (3)" in error.message
    assert 'File "' not in error.message


def test_cancel_interrupts_the_prompt(client: ComfyClient, comfy_target: Target) -> None:
    # Given a slow graph, and a job cancelled once its first blur is running
    comfy_target.make_slow()
    cancelled = threading.Event()

    def on_progress(progress: RenderProgress) -> None:
        if progress.node_type == "ImageBlur":
            cancelled.set()

    prompt_id = new_id()
    started = time.monotonic()

    # When it runs
    with pytest.raises(RenderCancelled):
        run(
            client,
            slow_workflow(color()),
            prompt_id=prompt_id,
            should_cancel=cancelled.is_set,
            on_progress=on_progress,
            poll_interval_s=0.05,
        )

    # Then the client gave up at once, and ComfyUI stopped at the next node boundary
    assert time.monotonic() - started < 30
    entry = comfy_target.wait_history(prompt_id)
    kinds = [kind for kind, _ in entry["status"]["messages"]]
    assert kinds[-1] == "execution_interrupted"
    assert entry["outputs"] == {}


def test_deadline_interrupts_and_raises_timeout(client: ComfyClient, comfy_target: Target) -> None:
    comfy_target.make_slow()
    prompt_id = new_id()
    started = time.monotonic()

    with pytest.raises(RenderTimeout):
        run(client, slow_workflow(color()), prompt_id=prompt_id, timeout_s=0.8)

    assert time.monotonic() - started < 5
    entry = comfy_target.wait_history(prompt_id)
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"


def test_cancel_before_start_submits_nothing(client: ComfyClient, comfy_target: Target) -> None:
    prompt_id = new_id()

    with pytest.raises(RenderCancelled):
        run(client, invert_workflow(color()), prompt_id=prompt_id, should_cancel=lambda: True)

    # run() is synchronous: anything it submitted has reached the double by now.
    if comfy_target.double is not None:
        assert comfy_target.double.received == []


def test_unreachable_server_is_unavailable():
    with ComfyClient("http://127.0.0.1:9", connect_timeout_s=1.0) as client:
        with pytest.raises(ComfyUnavailable):
            client.health()
        with pytest.raises(ComfyUnavailable):
            run(client, invert_workflow(1))
