"""ComfyUI's binary preview frames: reading them off the websocket and making them small.

Upstream sends previews (sampler previews, SaveImageWebsocket images) as binary frames
to the client id that queued the prompt (see docs/comfyui.md):

* event 1, PREVIEW_IMAGE: `uint32be 1` + `uint32be format` (1 JPEG, 2 PNG) + image;
* event 4, PREVIEW_IMAGE_WITH_METADATA (clients that negotiated
  `supports_preview_metadata`): `uint32be 4` + `uint32be len` + JSON metadata of `len`
  bytes (`node_id`, `prompt_id`, `image_type`, ...) + image.

Other events (3, unencoded previews of some custom nodes) are ignored.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

_PREVIEW_IMAGE = 1
_PREVIEW_WITH_METADATA = 4
_FORMATS = {1: "image/jpeg", 2: "image/png"}
#: Larger than any preview: a frame beyond this is not decoded at all.
_MAX_FRAME_BYTES = 32 * 1024 * 1024
#: Pixels a frame may claim before it is decoded (a workflow chooses its image sizes).
_MAX_PIXELS = 40_000_000


@dataclass(frozen=True, slots=True)
class PreviewFrame:
    """One preview image as ComfyUI sent it."""

    content_type: str
    image: bytes
    node_id: str | None = None


def parse_frame(raw: bytes) -> PreviewFrame | None:
    """The preview in a binary websocket frame, or None when it is not one we read."""
    if len(raw) < 8 or len(raw) > _MAX_FRAME_BYTES:
        return None
    event, second = struct.unpack(">II", raw[:8])
    if event == _PREVIEW_IMAGE:
        content_type = _FORMATS.get(second)
        return PreviewFrame(content_type, raw[8:]) if content_type else None
    if event == _PREVIEW_WITH_METADATA and 8 + second <= len(raw):
        try:
            meta = json.loads(raw[8 : 8 + second])
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        node = meta.get("display_node_id") or meta.get("node_id")
        return PreviewFrame(
            str(meta.get("image_type") or "image/png"),
            raw[8 + second :],
            str(node) if node is not None else None,
        )
    return None


def data_url(frame: PreviewFrame, max_px: int, max_bytes: int) -> str | None:
    """The preview as a small JPEG `data:` URL, or None if it cannot be made small enough.

    Downscaled to fit `max_px` on its longer side; `max_bytes` bounds the encoded image
    (the URL is a third larger), since it is stored in the job's record.
    """
    try:
        with Image.open(io.BytesIO(frame.image)) as img:
            if img.width * img.height > _MAX_PIXELS:
                return None
            img.thumbnail((max_px, max_px))
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    for quality in (75, 50, 30):
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= max_bytes:
            return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return None
