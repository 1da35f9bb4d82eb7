"""One websocket per ComfyClient, shared by every prompt it follows.

ComfyUI sends a prompt's messages to the socket of the client id it was posted with, and
every message names its `prompt_id`. So one socket (one client id, one reader thread)
serves all the prompts a render worker keeps queued: the reader routes each message to
the `Mailbox` of its prompt, registered before the prompt is posted so nothing is missed.
Binary preview frames carry no prompt id; ComfyUI runs one prompt at a time, so a frame
belongs to the prompt running when it came (the last `execution_start` or `executing`).

When the socket drops, every mailbox gets `LOST` (its follower polls the history at once
and reconnects through `connect`), and is marked `gap`: some of its messages may be
missing, so its outputs must come from `/history`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Final

import structlog
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

log = structlog.get_logger()

#: Largest websocket frame accepted: SaveImageWebsocket sends whole images as frames.
_WS_MAX_BYTES = 64 * 1024 * 1024


class _Lost:
    """The socket dropped: messages may be missing (a marker in a mailbox)."""


LOST: Final = _Lost()
#: What a mailbox holds: a decoded text message, a binary frame, or `LOST`.
Item = Mapping[str, Any] | bytes | _Lost
#: The messages that say which prompt runs now (for binary frames).
_STARTS = frozenset({"execution_start", "executing"})
_ENDS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


class Mailbox:
    """The messages of one prompt, in the order the socket delivered them."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        #: True once the socket dropped while this prompt was registered.
        self.gap = False
        self._items: queue.SimpleQueue[Item] = queue.SimpleQueue()

    def put(self, item: Item) -> None:
        if item is LOST:
            self.gap = True
        self._items.put(item)

    def get(self, timeout_s: float) -> Item | None:
        """The next item, or None if none came within `timeout_s`."""
        try:
            return self._items.get(timeout=timeout_s) if timeout_s > 0 else self._items.get_nowait()
        except queue.Empty:
            return None


class SocketHub:
    """The one websocket of a client id, and the prompts waiting on it."""

    def __init__(self, base_url: str, client_id: str) -> None:
        self.base_url = base_url
        self.client_id = client_id
        self._lock = threading.Lock()
        self._boxes: dict[str, Mailbox] = {}
        self._socket: Socket | None = None
        self._running: str | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._socket is not None

    def connect(self, timeout_s: float) -> bool:
        """Open the socket unless it is open; whether it is open now."""
        with self._lock:  # one opener at a time: the others then find it open
            if self._socket is not None:
                return True
            if self._closed:
                return False
            socket = open_socket(self.base_url, self.client_id, timeout_s)
            if socket is None:
                return False
            self._socket = socket
        reader = threading.Thread(target=self._read, args=(socket,), name="comfy-ws", daemon=True)
        reader.start()
        return True

    def register(self, prompt_id: str) -> Mailbox:
        """A mailbox for `prompt_id`; register before posting the prompt."""
        box = Mailbox(prompt_id)
        with self._lock:
            self._boxes[prompt_id] = box
        return box

    def unregister(self, prompt_id: str) -> None:
        with self._lock:
            self._boxes.pop(prompt_id, None)

    def close(self) -> None:
        """Close the socket for good (the reader thread ends with it)."""
        with self._lock:
            self._closed = True
            socket, self._socket = self._socket, None
        if socket is not None:
            socket.close()

    def _read(self, socket: Socket) -> None:
        error = "closed"
        while True:
            try:
                raw = socket.connection.recv()
            except (ConnectionClosed, OSError, WebSocketException) as exc:
                error = str(exc) or type(exc).__name__
                break
            self._route(raw)
        with self._lock:
            mine = self._socket is socket
            if mine:
                self._socket, self._running = None, None  # frames while away are lost
            boxes = list(self._boxes.values())
            closed = self._closed
        socket.close()
        if mine and not closed:
            log.warning("comfy_ws_dropped", client_id=self.client_id, error=error)
            for box in boxes:
                box.put(LOST)

    def _route(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):  # previews: the running prompt's
            running = self._running
            box = self._boxes.get(running) if running is not None else None
            if box is not None:
                box.put(raw)
            return
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("comfy_ws_bad_message", client_id=self.client_id)
            return
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
            return  # `status`, `feature_flags`: about no prompt of ours
        prompt_id: str = data["prompt_id"]
        kind = message.get("type")
        if kind in _STARTS and (kind == "execution_start" or data.get("node") is not None):
            self._running = prompt_id
        elif (kind in _ENDS or kind == "executing") and self._running == prompt_id:
            self._running = None
        box = self._boxes.get(prompt_id)
        if box is not None:
            box.put(message)


@dataclass(frozen=True, slots=True)
class Socket:
    """An open websocket and what closes it."""

    connection: ClientConnection
    stack: ExitStack

    def close(self) -> None:
        self.stack.close()


def open_socket(base_url: str, client_id: str, timeout_s: float) -> Socket | None:
    """The websocket, or None (the runs then poll the history instead)."""
    url = base_url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
    # Entered as a context manager: that is websockets' supported way from 13 to 17+.
    stack = ExitStack()
    try:
        connection = stack.enter_context(
            connect(
                url,
                open_timeout=max(timeout_s, 0.1),
                close_timeout=0.25,
                max_size=_WS_MAX_BYTES,
                proxy=None,
            )
        )
        _await_greeting(connection, max(timeout_s, 0.1))
    except (OSError, TimeoutError, WebSocketException) as exc:
        stack.close()
        log.warning("comfy_ws_unavailable", url=url, error=str(exc) or type(exc).__name__)
        return None
    return Socket(connection, stack)


def _await_greeting(connection: ClientConnection, timeout_s: float) -> None:
    """Wait for the `status` ComfyUI sends a socket once it is registered under its id.

    Only then is every message for our client id sure to reach us; posting earlier could
    race the registration. If no greeting comes, the history polls still cover us.
    """
    end = time.monotonic() + timeout_s
    while (left_s := end - time.monotonic()) > 0:
        try:
            raw = connection.recv(timeout=left_s)
        except TimeoutError:
            return
        if isinstance(raw, str) and '"status"' in raw:
            return
