"""Shared fixtures: a clean environment and settings built per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.config import ENV_PREFIX, Settings
from tests.support.settings import SettingsFactory

#: Shared fixtures that live in their own modules (a real S3 server for storage tests).
pytest_plugins = ["tests.support.s3_server"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's own COMFYUI_SAAS_* variables."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
def settings_factory(tmp_path: Path) -> SettingsFactory:
    """Build Settings rooted in a temporary data folder."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path / "data"}
        values.update(overrides)
        return Settings(**values)

    return make
