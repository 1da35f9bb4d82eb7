"""Waiting for one prompt: its mailbox, the history fallback, cancel and deadline.

`Follower.follow` reads the prompt's mailbox on the client's shared websocket
(`app.adapters.comfy.hub`, registered before the prompt was posted) until the prompt's
terminal message. When the socket drops it polls `/history/{id}` every `poll_interval_s`
and reconnects the hub with the same client id (ComfyUI then sends the rest of the
prompt's messages to the new socket). While the socket is up the history is still read
every `history_check_s`, so a prompt that vanished from ComfyUI (deleted, or lost in a
restart) is noticed instead of waited on until the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from app.adapters.comfy.hub import LOST, Mailbox, SocketHub
from app.adapters.comfy.messages import HistoryEntry, PromptEnding
from app.adapters.comfy.previews import PreviewFrame, parse_frame
from app.adapters.comfy.tracker import RenderProgress, RunTracker
from app.core.errors import ComfyUnavailable, RenderCancelled, RenderTimeout

log = structlog.get_logger()

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


class Follower:
    """The loop state of one `ComfyClient.run`: websocket, tracker and timers."""

    def __init__(
        self,
        client: Probe,
        prompt_id: str,
        hub: SocketHub,
        box: Mailbox,
        workflow: Mapping[str, Any],
        deadline_s: float,
        should_cancel: Callable[[], bool],
    ) -> None:
        self.client = client
        self.prompt_id = prompt_id
        self.hub = hub
        self.box = box
        self.deadline_s = deadline_s
        self.should_cancel = should_cancel
        self.tracker = RunTracker(prompt_id, workflow)
        now = time.time()
        self.next_history = now + (client.history_check_s if hub.connected else 0.0)
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
            if not self.hub.connected:
                wait_s = min(wait_s, max(0.0, self.next_history - now))
            self._receive(wait_s)
            if self.tracker.terminal is None and time.time() >= self.next_history:
                entry = self._poll_history(poll_interval_s)
                if entry is not None:
                    return entry.terminal, entry
            if not self.hub.connected and time.time() >= self.next_reconnect:
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

    def _receive(self, wait_s: float) -> None:
        item = self.box.get(wait_s)
        if item is None:
            return
        if item is LOST:
            self.next_history = time.time()  # the terminal message may be lost: poll now
            self.next_reconnect = time.time() + 1.0
        elif isinstance(item, bytes):  # preview images and SaveImageWebsocket frames
            frame = parse_frame(item) if self.on_preview is not None else None
            if frame is not None and self.on_preview is not None:
                self.on_preview(frame)
        else:
            self.tracker.handle(item)

    def _reconnect(self) -> None:
        # The same client id: ComfyUI then sends this prompt's messages to the new socket.
        if not self.hub.connect(min(1.0, self.client.connect_timeout_s)):
            self.next_reconnect = time.time() + 2.0
        else:
            log.info("comfy_ws_reconnected", prompt_id=self.prompt_id)
            self.next_history = time.time()  # messages sent while away are lost

    def _poll_history(self, poll_interval_s: float) -> HistoryEntry | None:
        timeout_s = max(0.1, min(POLL_TIMEOUT_S, self.deadline_s - time.time()))
        interval_s = self.client.history_check_s if self.hub.connected else poll_interval_s
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
