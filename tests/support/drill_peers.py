"""The far ends of the fault drills (`scripts/drills.py`): real servers that are slow or down.

* `InputServer`: serves PNG inputs; a path put on hold is sent one byte at a time for as
  long as the hold lasts (a slow origin), so a fetch worker holds its job meanwhile.
* `Receiver`: a webhook receiver that records every POST; `hold_next()` makes it keep the
  next request unanswered until its sender hangs up (a slow receiver: the notify worker
  holds the delivery meanwhile); `down()` / `up()` close and reopen its port (an outage).
* `socket_owner`: which of some processes holds the client end of a TCP connection, so a
  drill kills exactly the worker that holds the job.

Everything listens on 127.0.0.1 only; `close()` stops it (the drills call it in a finally).
"""

from __future__ import annotations

import io
import json
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

#: Pause between the bytes of a held input.
DRIP_INTERVAL_S = 0.2


def png_bytes(size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


class _Server:
    """A ThreadingHTTPServer on a fixed 127.0.0.1 port that can go down and come back."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self._handler = handler
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.up()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def up(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Stop listening: new connections are refused until `up()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def close(self) -> None:
        self.down()


class InputServer(_Server):
    """GET /<anything>.png answers a small PNG; held paths trickle while held."""

    def __init__(self) -> None:
        self.body = png_bytes()
        self.lock = threading.Lock()
        self.held: set[str] = set()
        #: path -> client port of a request being trickled right now.
        self.trickling: dict[str, int] = {}
        self.served: list[str] = []
        super().__init__(_input_handler(self))

    def hold(self, path: str) -> None:
        with self.lock:
            self.held.add(path)

    def release(self, path: str) -> None:
        with self.lock:
            self.held.discard(path)


def _input_handler(site: InputServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = site.body
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = 0
            try:
                with site.lock:
                    held = self.path in site.held
                    if held:
                        site.trickling[self.path] = int(self.client_address[1])
                while held and sent < len(body) - 1:
                    self.wfile.write(body[sent : sent + 1])
                    self.wfile.flush()
                    sent += 1
                    time.sleep(DRIP_INTERVAL_S)
                    with site.lock:
                        held = self.path in site.held
                self.wfile.write(body[sent:])
                with site.lock:
                    site.served.append(self.path)
            except OSError:
                pass  # the fetch worker was killed mid-download
            finally:
                with site.lock:
                    if site.trickling.get(self.path) == int(self.client_address[1]):
                        del site.trickling[self.path]

    return Handler


@dataclass
class Post:
    """One webhook POST as the receiver saw it; `status` None: it hung up unanswered."""

    job_id: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None


@dataclass
class _ReceiverState:
    posts: list[Post] = field(default_factory=list)
    hold_next: bool = False
    #: Client port of a POST being held unanswered right now.
    holding: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Receiver(_Server):
    """A webhook receiver on 127.0.0.1 that answers 204 unless told to stall."""

    def __init__(self) -> None:
        self.state = _ReceiverState()
        super().__init__(_receiver_handler(self.state))

    def hold_next(self) -> None:
        with self.state.lock:
            self.state.hold_next = True

    @property
    def holding(self) -> int | None:
        with self.state.lock:
            return self.state.holding

    def posts(self, job_id: str) -> list[Post]:
        with self.state.lock:
            return [p for p in self.state.posts if p.job_id == job_id]

    def delivered(self, job_id: str) -> list[Post]:
        return [p for p in self.posts(job_id) if p.status is not None and p.status < 300]


def _peer_gone(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0.05)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _receiver_handler(state: _ReceiverState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                job_id = str(json.loads(body)["data"]["job_id"])
            except (ValueError, KeyError, TypeError):
                job_id = ""
            post = Post(job_id, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
            with state.lock:
                state.posts.append(post)
                hold, state.hold_next = state.hold_next, False
                if hold:
                    state.holding = int(self.client_address[1])
            if hold:
                # Never answered: wait for the sender to hang up (it is killed meanwhile).
                deadline = time.monotonic() + 120
                while not _peer_gone(self.connection) and time.monotonic() < deadline:
                    pass
                with state.lock:
                    state.holding = None
                self.close_connection = True
                return
            post.status = 204
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def socket_owner(pids: dict[str, int], client_port: int) -> str | None:
    """The name in `pids` whose process holds the 127.0.0.1:`client_port` socket."""
    inode = _inode_of(client_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for name, pid in pids.items():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return name
            except OSError:
                continue
    return None


def _inode_of(local_port: int) -> str | None:
    wanted = f"0100007F:{local_port:04X}"
    try:
        lines = open("/proc/net/tcp").read().splitlines()[1:]  # noqa: SIM115
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if fields[1] == wanted:
            return fields[9]
    return None
