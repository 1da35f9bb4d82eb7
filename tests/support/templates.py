"""A node catalog and a template for template tests, from real `/object_info` captures."""

from __future__ import annotations

import copy
import json
from typing import Any

from app.adapters.comfy.catalog import NodeCatalog
from tests.paths import FIXTURES

#: Models a test deployment "ships" (the capture's server had none).
CHECKPOINTS = ["sd15.safetensors", "sdxl.safetensors"]


def object_info() -> dict[str, Any]:
    """The core image nodes plus sampler, loaders and primitives, all captured for real."""
    folder = FIXTURES
    info: dict[str, Any] = json.loads((folder / "object_info.json").read_text())
    info.update(json.loads((folder / "object_info_templates.json").read_text()))
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = list(CHECKPOINTS)
    return info


def catalog() -> NodeCatalog:
    return NodeCatalog.from_object_info(object_info())


#: Text to image with a photo blended in: every input type has a place here.
GRAPH: dict[str, Any] = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
    "4": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 512, "height": 512, "batch_size": 1},
    },
    "5": {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0],
            "seed": 0,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "positive": ["2", 0],
            "negative": ["3", 0],
            "latent_image": ["4", 0],
            "denoise": 1.0,
        },
    },
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    "7": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "8": {
        "class_type": "ImageBlend",
        "inputs": {
            "image1": ["6", 0],
            "image2": ["7", 0],
            "blend_factor": 0.5,
            "blend_mode": "normal",
        },
    },
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "p"}},
    "10": {"class_type": "PrimitiveBoolean", "inputs": {"value": True}},
}

INPUTS: dict[str, Any] = {
    "prompt": {"type": "string", "places": [["2", "text"]], "description": "What to draw."},
    "negative": {"type": "string", "places": [["3", "text"]], "default": "blurry"},
    "seed": {"type": "seed", "places": [["5", "seed"]], "default": "random"},
    "steps": {"type": "integer", "places": [["5", "steps"]], "default": 20, "maximum": 50},
    "cfg": {"type": "number", "places": [["5", "cfg"]], "default": 7.0},
    "sampler": {"type": "enum", "places": [["5", "sampler_name"]], "default": "euler"},
    "model": {"type": "model", "places": [["1", "ckpt_name"]], "default": "sd15.safetensors"},
    "photo": {"type": "image", "places": [["7", "image"]]},
    "flag": {"type": "boolean", "places": [["10", "value"]], "default": True},
    "size": {
        "type": "integer",
        "places": [["4", "width"], ["4", "height"]],
        "default": 512,
        "minimum": 64,
        "maximum": 1024,
    },
}


def spec(**changes: Any) -> dict[str, Any]:
    """`INPUTS` with some inputs replaced (a value of None removes that input)."""
    inputs = copy.deepcopy(INPUTS)
    for name, value in changes.items():
        if value is None:
            inputs.pop(name, None)
        else:
            inputs[name] = value
    return inputs


def graph() -> dict[str, Any]:
    return copy.deepcopy(GRAPH)
