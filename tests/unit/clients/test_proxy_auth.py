"""Our HTTP clients send Modal-Key/Modal-Secret when configured (requires_proxy_auth)."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import httpx
import pytest
from pydantic import SecretStr

from app.clients.http_client import ApiClient
from app.clients.proxy_auth import proxy_auth_headers
from app.clients.smoke import SmokeConfig, run_smoke
from app.core.config import Settings


def _settings(tmp_path: Path, key: str = "wk-abc", secret: str = "ws-xyz") -> Settings:
    return Settings(data_dir=tmp_path, modal_proxy_key=key, modal_proxy_secret=SecretStr(secret))


def _edge(seen: list[httpx.Request]) -> httpx.MockTransport:
    """Modal's edge: without both headers it answers 401 before the API sees anything."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.headers.get("Modal-Key") != "wk-abc" or (
            request.headers.get("Modal-Secret") != "ws-xyz"
        ):
            return httpx.Response(401, text="modal-http: missing credentials for proxy auth")
        return httpx.Response(200, json={"status": "ok"})

    return httpx.MockTransport(handle)


def test_nothing_is_sent_unless_both_are_configured(tmp_path: Path) -> None:
    assert proxy_auth_headers(Settings(data_dir=tmp_path)) == {}
    assert proxy_auth_headers(_settings(tmp_path, secret="")) == {}
    assert proxy_auth_headers(_settings(tmp_path)) == {
        "Modal-Key": "wk-abc",
        "Modal-Secret": "ws-xyz",
    }


def test_the_api_client_sends_them_on_api_calls(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    headers = proxy_auth_headers(_settings(tmp_path))
    with ApiClient(
        "https://x.modal.run", "csk_k", "alice", transport=_edge(seen), proxy_headers=headers
    ) as client:
        client._call("GET", "/health")
    assert seen[0].headers["Modal-Key"] == "wk-abc"
    assert seen[0].headers["Authorization"] == "Bearer csk_k"


def test_the_smoke_checks_send_them_on_every_call(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    run_smoke(
        "https://x.modal.run",
        SmokeConfig(api_key="csk_k", job_timeout_s=0.01, poll_interval_s=0.01),
        trust_env=False,
        proxy_headers=proxy_auth_headers(_settings(tmp_path)),
        transport=_edge(seen),
    )
    assert seen
    assert all(r.headers.get("Modal-Secret") == "ws-xyz" for r in seen)


def test_the_secret_is_never_in_the_settings_repr(tmp_path: Path) -> None:
    assert "ws-xyz" not in repr(_settings(tmp_path))


def test_the_cli_passes_them_to_its_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import common as cli_common

    made: list[dict[str, object]] = []

    class Recorder:
        def __init__(self, *args: object, **kwargs: object) -> None:
            made.append(kwargs)

        def __enter__(self) -> Self:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(cli_common, "ApiClient", Recorder)
    monkeypatch.setattr(cli_common, "settings", lambda: _settings(tmp_path))
    with cli_common.api("https://x.modal.run", "csk_k", "alice"):
        pass
    assert made[0]["proxy_headers"] == {"Modal-Key": "wk-abc", "Modal-Secret": "ws-xyz"}
