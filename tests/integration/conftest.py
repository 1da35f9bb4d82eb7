"""Integration fixtures: the ComfyUI double, or a real ComfyUI at COMFYUI_URL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.comfy_double import ComfyDouble
from tests.integration.comfy_target import Target


@pytest.fixture
def comfy_double(tmp_path: Path) -> Iterator[ComfyDouble]:
    """A fresh double on a free loopback port, stopped after the test."""
    double = ComfyDouble(tmp_path / "comfy")
    double.start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture(params=["double", pytest.param("real", marks=pytest.mark.comfyui)])
def comfy_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The double, then (when COMFYUI_URL is set) a real ComfyUI."""
    if request.param == "real":
        url = os.environ.get("COMFYUI_URL", "")
        if not url:
            pytest.skip("COMFYUI_URL is not set; see docs/comfyui.md")
        target = Target(url.rstrip("/"), None)
        target.idle()
        yield target
        return
    double = ComfyDouble(tmp_path / "comfy")
    double.start()
    try:
        yield Target(double.url, double)
    finally:
        double.stop()
