"""Settings: `.env.example` documents exactly the code's defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.config import ENV_PREFIX, Settings, env_value
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT


def _example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_env_example_lists_every_setting_with_its_default() -> None:
    defaults = Settings()
    expected = {
        f"{ENV_PREFIX}{name.upper()}": env_value(getattr(defaults, name))
        for name in Settings.model_fields
    }
    assert _example() == expected


def test_env_example_values_parse_back_to_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _example().items():
        monkeypatch.setenv(name, value)
    assert Settings() == Settings.model_construct()


def test_list_settings_accept_comma_separated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_SAAS_FETCH_ALLOW_CIDRS", "127.0.0.2/32, 10.0.0.0/8")
    monkeypatch.setenv("COMFYUI_SAAS_WEBHOOK_RETRY_SCHEDULE_S", "1,2")
    settings = Settings()
    assert settings.fetch_allow_cidrs == ["127.0.0.2/32", "10.0.0.0/8"]
    assert settings.webhook_retry_schedule_s == [1, 2]


def test_defaults_are_conservative() -> None:
    settings = Settings()
    assert settings.local_render_workers == 1
    assert not settings.fetch_allow_http
    assert settings.fetch_allow_cidrs == []
    assert settings.max_active_jobs_per_user == 5


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().port = 1  # type: ignore[misc]


def test_dev_on_another_port_signs_links_for_that_port() -> None:
    from app.deploy.local.runner import listening_settings

    moved = listening_settings(Settings(), "127.0.0.1", 8010)
    assert (moved.port, moved.public_url) == (8010, "http://127.0.0.1:8010")
    everywhere = listening_settings(Settings(), "0.0.0.0", 9000)
    assert everywhere.public_url == "http://127.0.0.1:9000"
    chosen = Settings(public_url="https://files.example.com")
    assert listening_settings(chosen, "0.0.0.0", 9000).public_url == "https://files.example.com"
