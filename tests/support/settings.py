"""The type of the ``settings_factory`` fixture, for tests that take it."""

from __future__ import annotations

from typing import Any, Protocol

from app.core.config import Settings


class SettingsFactory(Protocol):
    """Builds Settings rooted in the test's temporary data folder; keywords override fields."""

    def __call__(self, **overrides: Any) -> Settings: ...
