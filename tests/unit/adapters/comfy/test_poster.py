"""`PromptPoster`: one kept-alive connection per thread, renewed when it cannot be used."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.adapters.comfy.poster import PromptPoster
from app.core.errors import ComfyUnavailable


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.bodies: list[bytes] = []
        #: Close each connection right after its answer (as a restarted server would).
        self.close_after_answer = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(body)
        status = 400 if body == b"bad" else 200
        answer = b'{"prompt_id": "p"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        if self.server.close_after_answer:
            self.close_connection = True

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def poster_for(srv: _Server) -> PromptPoster:
    host, port = srv.server_address[:2]
    return PromptPoster(f"http://{host!s}:{port}", timeout_s=5.0, connect_timeout_s=2.0)


def test_posts_reuse_one_connection_and_return_status_and_body(server: _Server) -> None:
    poster = poster_for(server)
    first = poster.post_json("/prompt", b'{"a": 1}')
    second = poster.post_json("/prompt", b"bad")
    poster.close()
    assert (first.status, first.body) == (200, b'{"prompt_id": "p"}')
    assert second.status == 400
    assert server.bodies == [b'{"a": 1}', b"bad"]
    assert server.connections == 1


def test_a_connection_the_server_closed_is_opened_again(server: _Server) -> None:
    server.close_after_answer = True
    poster = poster_for(server)
    answers = [poster.post_json("/prompt", b"{}").status for _ in range(3)]
    poster.close()
    assert answers == [200, 200, 200]
    assert server.connections == 3


def test_each_thread_has_its_own_connection(server: _Server) -> None:
    poster = poster_for(server)
    done: list[int] = []

    def post() -> None:
        done.append(poster.post_json("/prompt", b"{}").status)
        done.append(poster.post_json("/prompt", b"{}").status)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert done == [200] * 4
    assert server.connections == 2


def test_no_server_is_comfy_unavailable() -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    poster = PromptPoster(f"http://127.0.0.1:{port}", timeout_s=1.0, connect_timeout_s=1.0)
    with pytest.raises(ComfyUnavailable, match="did not accept a connection"):
        poster.post_json("/prompt", b"{}")


def test_an_answer_cut_short_is_comfy_unavailable_and_the_next_call_starts_afresh() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[int] = []

    def serve() -> None:
        for n in range(2):
            conn, _ = listener.accept()
            accepted.append(n)
            with conn:
                conn.recv(65536)
                if n == 0:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    thread = threading.Thread(target=serve)
    thread.start()
    poster = PromptPoster(f"http://127.0.0.1:{port}", timeout_s=2.0, connect_timeout_s=2.0)
    try:
        with pytest.raises(ComfyUnavailable, match="did not answer POST /prompt"):
            poster.post_json("/prompt", b"{}")
        assert poster.post_json("/prompt", b"{}").body == b"{}"
    finally:
        poster.close()
        thread.join(timeout=5)
        listener.close()
    assert accepted == [0, 1]


def test_only_http_urls_are_taken() -> None:
    with pytest.raises(ValueError, match="not an http"):
        PromptPoster("ftp://x", timeout_s=1.0, connect_timeout_s=1.0)
