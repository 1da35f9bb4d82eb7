"""A protocol-faithful ComfyUI double for tests (never shipped)."""

from __future__ import annotations

from tests.comfy_double.server import ComfyDouble

__all__ = ["ComfyDouble"]
