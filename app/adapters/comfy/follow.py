"""Waiting for one prompt: the websocket, the history fallback, cancel and deadline.

`Follower.follow` reads the websocket (opened before the prompt was posted) until the
prompt's terminal message. When the socket drops it polls `/history/{id}` every
`poll_interval_s` and tries to reconnect with the same client id (ComfyUI then sends the
rest of the prompt's messages to the new socket). While the socket is up the history is
still read every `history_check_s`, so a prompt that vanished from ComfyUI (deleted, or
lost in a restart) is noticed instead of waited on until the deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from app.adapters.comfy.messages import HistoryEntry, PromptEnding
from app.adapters.comfy.previews import PreviewFrame, parse_frame
from app.adapters.comfy.tracker import RenderProgress, RunTracker
from app.core.errors import ComfyUnavailable, RenderCancelled, RenderTimeout

log = structlog.get_logger()

#: Largest websocket frame accepted: SaveImageWebsocket sends whole images as frames.
_WS_MAX_BYTES = 64 * 1024 * 1024
#: Bound on one history/queue poll while following a prompt.
POLL_TIMEOUT_S = 5.0


class Probe(Protocol):
    """What the follower asks the server while the websocket cannot tell it."""

    base_url: str
    connect_timeout_s: float
    unavailable_grace_s: float
    history_check_s: float

    def history(self, prompt_id: str, *, timeout_s: float) -> HistoryEntry | None:
        """The finished prompt's history entry, or None."""

    def is_queued(self, prompt_id: str, *, timeout_s: float) -> bool:
        """Whether the prompt is running or pending."""


def open_socket(base_url: str, client_id: str, timeout_s: float) -> Socket | None:
    """The websocket, or None (the run then polls the history instead)."""
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


@dataclass(frozen=True, slots=True)
class Socket:
    """An open websocket and what closes it."""

    connection: ClientConnection
    stack: ExitStack

    def close(self) -> None:
        self.stack.close()


class Follower:
    """The loop state of one `ComfyClient.run`: websocket, tracker and timers."""

    def __init__(
        self,
        client: Probe,
        prompt_id: str,
        client_id: str,
        workflow: Mapping[str, Any],
        ws: Socket | None,
        deadline_s: float,
        should_cancel: Callable[[], bool],
    ) -> None:
        self.client = client
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.ws = ws
        self.deadline_s = deadline_s
        self.should_cancel = should_cancel
        self.tracker = RunTracker(prompt_id, workflow)
        now = time.time()
        self.next_history = now + (client.history_check_s if ws else 0.0)
        self.next_reconnect = now + 1.0
        self.failing_since: float | None = None
        self.missing_polls = 0
        self.last_sent: RenderProgress | None = None
        self.last_sent_at = 0.0
        #: Told of each binary preview frame (cheap: the render keeps only the newest).
        self.on_preview: Callable[[PreviewFrame], None] | None = None

    def follow(
        self,
        on_progress: Callable[[RenderProgress], None],
        poll_interval_s: float,
        progress_interval_s: float,
    ) -> tuple[PromptEnding, HistoryEntry | None]:
        """Wait for the terminal event; raise on cancel, deadline or a vanished server."""
        next_cancel_check = 0.0
        while True:
            if self.tracker.terminal is not None:
                return self.tracker.terminal, None
            now = time.time()
            if now >= self.deadline_s:
                raise RenderTimeout("the job's deadline passed while ComfyUI was rendering")
            if now >= next_cancel_check:
                if self.should_cancel():
                    raise RenderCancelled("the job was cancelled while rendering")
                next_cancel_check = now + poll_interval_s
            progress = self.tracker.progress()
            if progress != self.last_sent and now - self.last_sent_at >= progress_interval_s:
                on_progress(progress)
                self.last_sent, self.last_sent_at = progress, now
            wait_s = max(0.0, min(poll_interval_s, self.deadline_s - now))
            if self.ws is not None:
                self._receive(wait_s)
            elif now < self.next_history:
                time.sleep(min(wait_s, self.next_history - now))
            if self.tracker.terminal is None and time.time() >= self.next_history:
                entry = self._poll_history(poll_interval_s)
                if entry is not None:
                    return entry.terminal, entry
            if self.ws is None and time.time() >= self.next_reconnect:
                self._reconnect()

    def emit_final(self, on_progress: Callable[[RenderProgress], None]) -> None:
        """The closing progress report (fraction 1.0), sent whatever the throttle says."""
        last = self.tracker.progress()
        done = max(last.nodes_done, last.nodes_total)
        on_progress(
            RenderProgress(
                fraction=1.0,
                node_id=last.node_id,
                node_type=last.node_type,
                value=last.max,
                max=last.max,
                nodes_done=done,
                nodes_total=done,
            )
        )

    def close(self) -> None:
        """Close the websocket, if open."""
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def _receive(self, wait_s: float) -> None:
        assert self.ws is not None
        try:
            raw = self.ws.connection.recv(timeout=wait_s)
        except TimeoutError:
            return
        except (ConnectionClosed, OSError) as exc:
            log.warning("comfy_ws_dropped", prompt_id=self.prompt_id, error=str(exc))
            self.close()
            self.next_history = time.time()  # the terminal message may be lost: poll now
            self.next_reconnect = time.time() + 1.0
            return
        if isinstance(raw, bytes):  # preview images and SaveImageWebsocket frames
            frame = parse_frame(raw) if self.on_preview is not None else None
            if frame is not None and self.on_preview is not None:
                self.on_preview(frame)
            return
        try:
            self.tracker.handle(json.loads(raw))
        except ValueError:
            log.warning("comfy_ws_bad_message", prompt_id=self.prompt_id)

    def _reconnect(self) -> None:
        # The same client id: ComfyUI then sends this prompt's messages to the new socket.
        open_s = min(1.0, self.client.connect_timeout_s)
        self.ws = open_socket(self.client.base_url, self.client_id, open_s)
        if self.ws is None:
            self.next_reconnect = time.time() + 2.0
        else:
            log.info("comfy_ws_reconnected", prompt_id=self.prompt_id)
            self.next_history = time.time()  # messages sent while away are lost

    def _poll_history(self, poll_interval_s: float) -> HistoryEntry | None:
        timeout_s = max(0.1, min(POLL_TIMEOUT_S, self.deadline_s - time.time()))
        interval_s = poll_interval_s if self.ws is None else self.client.history_check_s
        self.next_history = time.time() + interval_s
        try:
            entry = self.client.history(self.prompt_id, timeout_s=timeout_s)
            known = entry is not None or self.client.is_queued(self.prompt_id, timeout_s=timeout_s)
        except ComfyUnavailable:
            now = time.time()
            self.failing_since = self.failing_since or now
            if now - self.failing_since >= self.client.unavailable_grace_s:
                raise
            return None
        self.failing_since = None
        if known:
            self.missing_polls = 0
            return entry
        # Neither done nor queued: ComfyUI lost it (restarted) or someone deleted it. Two
        # readings in a row, because the prompt may finish between the two requests.
        self.missing_polls += 1
        if self.missing_polls >= 2:
            raise ComfyUnavailable(f"ComfyUI no longer knows prompt {self.prompt_id}")
        self.next_history = time.time()
        return None
