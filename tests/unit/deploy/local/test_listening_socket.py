"""The one listening socket of `dev`: shared by every ingress process, never by two devs."""

from __future__ import annotations

import socket

import pytest

from app.core.errors import RunnerError
from app.deploy.local.runner import listening_socket


def test_a_port_in_use_is_refused_clearly_not_shared() -> None:
    # Given a port another program listens on
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        # When dev binds it, Then it is refused (no SO_REUSEPORT: never silently shared)
        with pytest.raises(RunnerError, match=f"could not serve on 127.0.0.1:{port}"):
            listening_socket("127.0.0.1", port)


def test_the_socket_listens_and_is_not_inherited_by_exec() -> None:
    sock = listening_socket("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            pass
        assert sock.get_inheritable() is False
    finally:
        sock.close()
