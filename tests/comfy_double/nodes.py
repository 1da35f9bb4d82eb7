"""The double's node implementations: model-free ComfyUI nodes done with Pillow.

An IMAGE is a list of RGB Pillow images (a batch). Each node returns its outputs and the
`ui` dict ComfyUI would report for an output node (None for others). Errors mimic what
upstream raises, with the same exception types and messages where the tests rely on them.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import string
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageFilter
from PIL.PngImagePlugin import PngInfo

Batch = list[Image.Image]


@dataclass
class NodeContext:
    """What a node may touch: the double's folders and a way to send binary frames."""

    input_dir: Path
    output_dir: Path
    temp_dir: Path
    prompt: dict[str, Any]
    node_id: str
    binary_frames: list[bytes] = field(default_factory=list)
    progress: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


def _empty_image(
    ctx: NodeContext, width: int, height: int, batch_size: int, color: int
) -> NodeResult:
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return NodeResult(([Image.new("RGB", (width, height), rgb) for _ in range(batch_size)],))


def _load_image(ctx: NodeContext, image: str) -> NodeResult:
    with Image.open(ctx.input_dir / image) as img:
        rgb = img.convert("RGB")
    mask = Image.new("L", rgb.size, 0)
    return NodeResult(([rgb], [mask]))


def _invert(ctx: NodeContext, image: Batch) -> NodeResult:
    return NodeResult(([ImageChops.invert(img) for img in image],))


def _scale(
    ctx: NodeContext, image: Batch, upscale_method: str, width: int, height: int, crop: str
) -> NodeResult:
    def size(img: Image.Image) -> tuple[int, int]:
        w, h = width, height
        if w == 0 and h == 0:
            return img.size
        if w == 0:
            w = max(1, round(img.width * h / img.height))
        if h == 0:
            h = max(1, round(img.height * w / img.width))
        return (w, h)

    resample = {
        "nearest-exact": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "area": Image.Resampling.BOX,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }[upscale_method]
    return NodeResult(([img.resize(size(img), resample) for img in image],))


def _blur(ctx: NodeContext, image: Batch, blur_radius: int, sigma: float) -> NodeResult:
    return NodeResult(([img.filter(ImageFilter.GaussianBlur(sigma)) for img in image],))


def _blend(
    ctx: NodeContext, image1: Batch, image2: Batch, blend_factor: float, blend_mode: str
) -> NodeResult:
    if len(image1) != len(image2) and 1 not in (len(image1), len(image2)):
        # What torch says when ComfyUI's ImageBlend meets two batch sizes.
        raise RuntimeError(
            f"The size of tensor a ({len(image1)}) must match the size of tensor b "
            f"({len(image2)}) at non-singleton dimension 0\n"
        )
    count = max(len(image1), len(image2))
    out = []
    for i in range(count):
        a = image1[min(i, len(image1) - 1)]
        b = image2[min(i, len(image2) - 1)].resize(a.size)
        out.append(Image.blend(a, b, blend_factor))
    return NodeResult((out,))


def _image_size(ctx: NodeContext, image: Batch) -> NodeResult:
    return NodeResult((image[0].width, image[0].height, len(image)))


def _primitive_int(ctx: NodeContext, value: int) -> NodeResult:
    return NodeResult((value,))


def _primitive_string(ctx: NodeContext, value: str) -> NodeResult:
    return NodeResult((value,))


def _batch(ctx: NodeContext, image1: Batch, image2: Batch) -> NodeResult:
    return NodeResult(([*image1, *(img.resize(image1[0].size) for img in image2)],))


def _counter(filename: str, name: str) -> int:
    """The n of `{name}_{n:05}_.png` (ComfyUI's counter), else 0. By hand, not a regex:
    every job's prefix is new, so a compiled pattern per save was never a cache hit and
    compiling it was a tenth of the double's CPU under load."""
    digits = filename[len(name) + 1 : -len("_.png")]
    if (
        filename.startswith(name + "_")
        and filename.endswith("_.png")
        and len(digits) == 5
        and digits.isdecimal()  # what the regex's \d took (isdigit() also takes "\u00b9")
    ):
        return int(digits)
    return 0


def _save(
    folder: Path, prefix: str, images: Batch, ctx: NodeContext, kind: str
) -> list[dict[str, Any]]:
    subfolder, _, name = prefix.rpartition("/")
    target = folder / subfolder
    target.mkdir(parents=True, exist_ok=True)
    counter = max((_counter(p.name, name) for p in target.iterdir()), default=0) + 1
    meta = PngInfo()
    meta.add_text("prompt", json.dumps(ctx.prompt))
    saved = []
    for img in images:
        filename = f"{name}_{counter:05}_.png"
        img.save(target / filename, pnginfo=meta, compress_level=1)
        saved.append({"filename": filename, "subfolder": subfolder, "type": kind})
        counter += 1
    return saved


def _save_image(ctx: NodeContext, images: Batch, filename_prefix: str = "ComfyUI") -> NodeResult:
    return NodeResult((), {"images": _save(ctx.output_dir, filename_prefix, images, ctx, "output")})


def _preview_image(ctx: NodeContext, images: Batch) -> NodeResult:
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    prefix = f"ComfyUI_temp_{suffix}"
    return NodeResult((), {"images": _save(ctx.temp_dir, prefix, images, ctx, "temp")})


def _save_websocket(ctx: NodeContext, images: Batch) -> NodeResult:
    for i, img in enumerate(images):
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
        # Event 1 (PREVIEW_IMAGE), format 2 (PNG), then the image: what upstream sends to
        # a client that did not negotiate preview metadata.
        ctx.binary_frames.append(struct.pack(">II", 1, 2) + buffer.getvalue())
        ctx.progress.append((i, len(images)))
    return NodeResult((), None)


def _preview_any(ctx: NodeContext, source: Any) -> NodeResult:
    return NodeResult((), {"text": [str(source)]})


NODES: dict[str, Callable[..., NodeResult]] = {
    "EmptyImage": _empty_image,
    "LoadImage": _load_image,
    "ImageInvert": _invert,
    "ImageScale": _scale,
    "ImageBlur": _blur,
    "ImageBlend": _blend,
    "GetImageSize": _image_size,
    "PrimitiveInt": _primitive_int,
    "PrimitiveString": _primitive_string,
    "ImageBatch": _batch,
    "SaveImage": _save_image,
    "PreviewImage": _preview_image,
    "SaveImageWebsocket": _save_websocket,
    "PreviewAny": _preview_any,
}

#: Nodes upstream marks as always changed (IS_CHANGED returns the time): never cached.
NEVER_CACHED = {"SaveImageWebsocket"}


def is_changed(class_type: str, inputs: dict[str, Any], input_dir: Path) -> str:
    """Upstream's IS_CHANGED: LoadImage hashes its file, so a new upload re-runs it."""
    if class_type == "LoadImage":
        path = input_dir / str(inputs.get("image", ""))
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return ""


def validate_custom(
    class_type: str, inputs: dict[str, Any], input_dir: Path
) -> list[dict[str, Any]]:
    """Upstream's VALIDATE_INPUTS for the nodes that have one (LoadImage)."""
    if class_type != "LoadImage":
        return []
    image = str(inputs.get("image", ""))
    if (input_dir / image).is_file() and ".." not in Path(image).parts:
        return []
    return [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": f"image - Invalid image file: {image}",
            "extra_info": {"input_name": "image"},
        }
    ]
