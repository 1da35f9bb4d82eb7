"""Where the ComfyUI client tests run: the protocol double, or a real ComfyUI.

A real server is used when `COMFYUI_URL` is set (tests marked `comfyui`); see
docs/comfyui.md. Graph builders here make workflows that work on both, varying an input
per call so ComfyUI's cache never turns a test's render into a no-op.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from tests.comfy_double import ComfyDouble
from tests.support.waiting import wait_until


@dataclass
class Target:
    """One ComfyUI to test against."""

    url: str
    double: ComfyDouble | None

    @property
    def is_real(self) -> bool:
        return self.double is None

    def make_slow(self) -> None:
        """Make `slow_workflow` take seconds per blur on the double, as it does for real."""
        if self.double is not None:
            self.double.node_delay_s = {"ImageBlur": 0.6}

    def wait_history(self, prompt_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """The prompt's history entry, once ComfyUI has written it."""

        def entry() -> dict[str, Any] | None:
            body = httpx.get(f"{self.url}/history/{prompt_id}", timeout=5).json()
            return dict(body[prompt_id]) if prompt_id in body else None

        return wait_until(
            entry, timeout_s=timeout_s, interval_s=0.1, what=f"prompt {prompt_id} in the history"
        )

    def idle(self, timeout_s: float = 60.0) -> None:
        """Wait until nothing is queued or running (a real server is shared by tests)."""

        def idle() -> bool:
            queue = httpx.get(f"{self.url}/queue", timeout=5).json()
            return not queue["queue_running"] and not queue["queue_pending"]

        wait_until(idle, timeout_s=timeout_s, interval_s=0.1, what="ComfyUI idle")


def new_id() -> str:
    return str(uuid.uuid4())


def color() -> int:
    """A random colour: a new input, so no node of the graph is served from cache."""
    return random.randrange(1, 0xFFFFFF)


def invert_workflow(rgb: int, prefix: str = "t_invert", size: int = 32) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": rgb},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def slow_workflow(rgb: int, size: int = 1024, blurs: int = 4) -> dict[str, Any]:
    """EmptyImage -> several large blurs -> SaveImage: about a second per blur on a CPU."""
    graph: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": rgb},
        }
    }
    source = "1"
    for i in range(blurs):
        node = str(10 + i)
        graph[node] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [source, 0], "blur_radius": 31, "sigma": 10.0},
        }
        source = node
    graph["99"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [source, 0], "filename_prefix": "t_slow"},
    }
    return graph


def blend_error_workflow(rgb: int) -> dict[str, Any]:
    """ImageBlend of a batch of 2 with a batch of 3: a runtime error in node 3."""

    def empty(batch: int) -> dict[str, Any]:
        inputs = {"width": 16, "height": 16, "batch_size": batch, "color": rgb}
        return {"class_type": "EmptyImage", "inputs": inputs}

    return {
        "1": empty(2),
        "2": empty(3),
        "3": {
            "class_type": "ImageBlend",
            "inputs": {
                "image1": ["1", 0],
                "image2": ["2", 0],
                "blend_factor": 0.5,
                "blend_mode": "normal",
            },
        },
        "4": {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": "t_err"},
        },
    }
