"""ComfyUI custom node that keeps CUDA untouched while Modal takes a memory snapshot.

Filled in by the Modal deployment work; see issue "Deploy on Modal".
"""

from __future__ import annotations

NODE_CLASS_MAPPINGS: dict[str, object] = {}
