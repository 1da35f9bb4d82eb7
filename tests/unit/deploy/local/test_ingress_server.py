"""The uvicorn server of a `dev` ingress process."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.core.config import Settings
from app.deploy.local.runner import ingress_server
from app.engine.deps import build_deps


def test_the_server_outlasts_a_clients_idle_connection(tmp_path: Path) -> None:
    # The client must close an idle keep-alive connection first: when the server's timer
    # fires as the client's next request arrives, that request gets a connection reset.
    settings = Settings(data_dir=tmp_path / "data")
    server = ingress_server(settings, build_deps(settings))
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert server.config.timeout_keep_alive > 60 > client_expiry
