"""The render side's client for one ComfyUI server (sync: httpx, `http.client` for the
prompt, and `websockets.sync`).

`run` follows ComfyUI's own protocol: connect `/ws?clientId=X` first, `POST /prompt`
with that client id and our prompt id, read the websocket until the prompt's terminal
message. The outputs come from the prompt's `executed` messages when the socket saw all
of them, else from `/history/{id}`. If the websocket drops it polls the history (and
reconnects when it can); a server that stops answering for `unavailable_grace_s` is
`ComfyUnavailable`, which is retryable. Cancellation and the deadline are checked at
least every `poll_interval_s`; both remove the prompt from ComfyUI's queue and
interrupt it before raising.

The client is shared by every render of a worker and safe to call from several threads
at once: one websocket (`SocketHub`, one client id) carries every prompt's messages,
routed by prompt id; one HTTP connection pool serves every call but `POST /prompt`,
which has a lean keep-alive connection per thread (`PromptPoster`: the render's one
request per job). So a worker keeps several prompts queued in ComfyUI, each `run` exact
about its own prompt.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import orjson
import structlog

from app.adapters.comfy.follow import POLL_TIMEOUT_S, Follower
from app.adapters.comfy.hub import SocketHub
from app.adapters.comfy.messages import (
    ComfyOutput,
    HistoryEntry,
    failure,
    read_history,
    select_outputs,
    validation_message,
)
from app.adapters.comfy.poster import PromptPoster
from app.adapters.comfy.previews import PreviewFrame
from app.adapters.comfy.tracker import RenderProgress
from app.core.errors import (
    ComfyUnavailable,
    InvalidRequest,
    InvalidWorkflow,
    RenderCancelled,
    RendererStuck,
    RenderFailed,
    RenderTimeout,
)

#: A lazy proxy: it picks up `configure_logging` whenever that runs.
log = structlog.get_logger()

#: Bound on each call made while giving a prompt up (cancel, deadline, failure).
_CLEANUP_TIMEOUT_S = 2.0
HEALTH_TIMEOUT_S = 3.0
#: How often an interrupted prompt is looked for while ComfyUI may still be stopping it.
_RELEASE_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What a finished prompt produced."""

    outputs: list[ComfyOutput]
    #: True if ComfyUI served an output node from its cache: its files are those of an
    #: earlier identical prompt (same names), not new ones.
    cached: bool
    elapsed_s: float
    #: Every file ComfyUI reported, delivered or not (previews beside saved files): what
    #: the prompt wrote, for the wipe.
    written: list[ComfyOutput] = field(default_factory=list)


class ComfyClient:
    """One ComfyUI server, addressed by `base_url` (`http://127.0.0.1:8188`)."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.Client | None = None,
        connect_timeout_s: float = 10.0,
        client_id: str | None = None,
        unavailable_grace_s: float = 5.0,
        history_check_s: float = 5.0,
        interrupt_grace_s: float = 15.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        #: The websocket's client id: one socket per client carries all its prompts.
        #: ComfyUI keeps one socket per id, so two clients never share an id.
        self.client_id = client_id or uuid.uuid4().hex
        #: How long the server may fail to answer during a run before it is unavailable.
        self.unavailable_grace_s = unavailable_grace_s
        #: While the websocket is up, the history is still read this often, so a prompt
        #: that vanished from ComfyUI (deleted by someone else) is noticed.
        self.history_check_s = history_check_s
        #: How long an interrupted prompt may keep running (ComfyUI interrupts only between
        #: nodes) before `run` raises `RendererStuck`: the renderer must be restarted.
        self.interrupt_grace_s = interrupt_grace_s
        self._owns_http = http is None
        # ComfyUI is a private service beside us: proxy variables must not reroute it.
        self._http = http or httpx.Client(
            timeout=httpx.Timeout(30.0, connect=connect_timeout_s), trust_env=False
        )
        self.hub = SocketHub(self.base_url, self.client_id)
        self._poster = PromptPoster(
            self.base_url, timeout_s=30.0, connect_timeout_s=connect_timeout_s
        )

    def close(self) -> None:
        """Close the websocket, and the HTTP client if this object created it."""
        self.hub.close()
        self._poster.close()
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- plain calls -----------------------------------------------------------------

    def health(self, timeout_s: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
        """`GET /system_stats`; raises `ComfyUnavailable` unless ComfyUI answers 200 in time.

        A short timeout: a frozen ComfyUI must not hold a render worker's health gate for
        the 30 s a render request may take.
        """
        return self._get_json("/system_stats", timeout=timeout_s)

    def ready(self) -> None:
        """Raise `ComfyUnavailable` unless ComfyUI is up: the render worker's gate per job.

        Free while the shared websocket is open (ComfyUI's server holds it; a crash or
        a restart closes it at once), else a `health` request.
        """
        if not self.hub.connected:
            self.health()

    def object_info(self) -> dict[str, Any]:
        """`GET /object_info`: every node class the server has."""
        return self._get_json("/object_info")

    def folder_paths(self) -> dict[str, Any]:
        """`GET /internal/folder_paths`: the model folders, from which the base folder shows."""
        return self._get_json("/internal/folder_paths")

    def upload_input(self, data: bytes, filename: str, subfolder: str) -> str:
        """Store an input file in ComfyUI's input folder; returns the name LoadImage takes."""
        response = self._request(
            "POST",
            "/upload/image",
            files={"image": (filename, data, "application/octet-stream")},
            data={"overwrite": "true", "type": "input", "subfolder": subfolder},
        )
        if response.status_code != 200:
            if response.status_code >= 500:
                raise ComfyUnavailable(f"ComfyUI failed to store input {filename!r}")
            raise InvalidRequest(
                f"ComfyUI refused input {filename!r} (HTTP {response.status_code})"
            )
        body = _json_object(response.content, "/upload/image")
        name = str(body.get("name") or filename)
        stored_in = str(body.get("subfolder") or "")
        return f"{stored_in}/{name}" if stored_in else name

    def download(self, output: ComfyOutput, dest: Path) -> int:
        """Stream one output file from `/view` to `dest`; returns its size in bytes."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        partial = dest.with_name(dest.name + ".part")
        try:
            with self._http.stream(
                "GET", self.base_url + "/view", params=params, timeout=httpx.Timeout(60.0)
            ) as response:
                if response.status_code == 404:
                    # Wiped or never written; fetching again will not bring it back.
                    raise RenderFailed(
                        f"ComfyUI has no output file {output.filename!r}",
                        node_id=output.node_id,
                    )
                if response.status_code != 200:
                    raise ComfyUnavailable(
                        f"ComfyUI answered HTTP {response.status_code} for {output.filename!r}"
                    )
                size = 0
                with partial.open("wb") as file:
                    for chunk in response.iter_bytes(1024 * 1024):
                        file.write(chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            log.warning("comfy_download_failed", filename=output.filename, error=str(exc))
            raise ComfyUnavailable(
                f"download of {output.filename!r} failed ({type(exc).__name__})"
            ) from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, dest)
        return size

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt `prompt_id` if it is running (at its next node boundary)."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    def delete_pending(self, prompt_id: str) -> None:
        """Remove `prompt_id` from the queue if it has not started."""
        self._request("POST", "/queue", json={"delete": [prompt_id]})

    # --- running a workflow --------------------------------------------------------

    def run(
        self,
        workflow: dict[str, Any],
        *,
        prompt_id: str,
        deadline_s: float,
        should_cancel: Callable[[], bool],
        on_progress: Callable[[RenderProgress], None],
        poll_interval_s: float = 0.25,
        progress_interval_s: float = 0.5,
        on_preview: Callable[[PreviewFrame], None] | None = None,
    ) -> RenderResult:
        """Run `workflow` as `prompt_id` until it finishes, fails, is cancelled or times out.

        `deadline_s` is absolute (`time.time()`). Raises `InvalidWorkflow` (ComfyUI's
        validation), `RenderFailed` (a node failed), `RenderCancelled`, `RenderTimeout`
        or `ComfyUnavailable` (retryable).
        """
        started = time.time()
        if started >= deadline_s:
            raise RenderTimeout("the job's deadline passed before the render started")
        if should_cancel():
            raise RenderCancelled()
        box = self.hub.register(prompt_id)  # before the POST: no message is missed
        if not self.hub.connect(min(self.connect_timeout_s, deadline_s - started)):
            box.gap = True  # no socket (yet): what it would have said comes from /history
        run = Follower(self, prompt_id, self.hub, box, workflow, deadline_s, should_cancel)
        run.on_preview = on_preview
        try:
            self._submit(workflow, prompt_id, self.client_id)
            terminal, entry = run.follow(on_progress, poll_interval_s, progress_interval_s)
        except InvalidWorkflow:
            raise  # nothing is left queued: refused outright, or taken back by _submit
        except (RenderTimeout, RenderCancelled) as exc:
            self._give_up(prompt_id)
            if not self._released(prompt_id, self.interrupt_grace_s):
                log.error("comfy_interrupt_not_honoured", prompt_id=prompt_id, cause=exc.code)
                raise RendererStuck(
                    f"{exc.message}; ComfyUI did not stop the workflow within "
                    f"{self.interrupt_grace_s:g} s of the interrupt, so the renderer is restarted"
                ) from exc
            raise
        except BaseException:
            # Whatever stopped us (lost server, a failing callback, the worker stopping),
            # the prompt must not keep a GPU busy for nobody. Also covers a POST whose
            # answer was lost after ComfyUI had queued it.
            self._give_up(prompt_id)
            raise
        finally:
            self.hub.unregister(prompt_id)
        if terminal.kind != "success":
            log.warning("comfy_prompt_failed", prompt_id=prompt_id, comfy=dict(terminal.data))
            raise failure(terminal)
        if entry is None and box.gap:
            # The socket dropped during the run: some `executed` messages may be lost.
            entry = self.history(prompt_id)
        produced = entry.outputs if entry is not None else run.tracker.executed_outputs()
        if not produced:
            produced = run.tracker.executed_outputs()
        outputs = select_outputs(produced)
        cached_nodes = run.tracker.cached_nodes | (entry.cached_nodes if entry else set())
        run.emit_final(on_progress)
        return RenderResult(
            outputs=outputs,
            cached=any(o.node_id in cached_nodes for o in outputs),
            elapsed_s=time.time() - started,
            written=list(produced),
        )

    def _submit(self, workflow: dict[str, Any], prompt_id: str, client_id: str) -> None:
        body = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        response = self._poster.post_json("/prompt", orjson.dumps(body))
        if response.status == 400:
            rejected = _parse(response.body)
            log.warning("comfy_rejected_prompt", prompt_id=prompt_id, comfy=rejected)
            raise InvalidWorkflow(validation_message(rejected))
        if response.status != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status} to /prompt")
        answer = _json_object(response.body, "/prompt")
        if answer.get("node_errors"):
            # ComfyUI queued only the valid outputs; a partial result would be a surprise.
            self._give_up(prompt_id)
            log.warning("comfy_rejected_prompt", prompt_id=prompt_id, comfy=answer)
            raise InvalidWorkflow(validation_message(answer))

    def _give_up(self, prompt_id: str) -> None:
        """Best effort: take the prompt out of the queue, then interrupt it if it runs."""
        # Delete first: a prompt that starts between the two calls is still interrupted.
        for path, body in (
            ("/queue", {"delete": [prompt_id]}),
            ("/interrupt", {"prompt_id": prompt_id}),
        ):
            try:
                self._http.post(self.base_url + path, json=body, timeout=_CLEANUP_TIMEOUT_S)
            except httpx.HTTPError as exc:
                log.warning("comfy_cleanup_failed", path=path, prompt_id=prompt_id, error=str(exc))

    def _released(self, prompt_id: str, grace_s: float) -> bool:
        """Whether ComfyUI let go of the prompt (neither running nor queued) within `grace_s`.

        A ComfyUI frozen inside a node may not even answer (a regular expression holds
        Python's GIL): no answer counts as still holding it.
        """
        until = time.monotonic() + grace_s
        while True:
            left = until - time.monotonic()
            try:
                if not self.is_queued(prompt_id, timeout_s=max(0.1, min(2.0, left))):
                    return True
            except ComfyUnavailable:
                pass
            if time.monotonic() >= until:
                return False
            time.sleep(min(_RELEASE_POLL_S, max(0.0, until - time.monotonic())))

    def history(self, prompt_id: str, *, timeout_s: float = POLL_TIMEOUT_S) -> HistoryEntry | None:
        """The prompt's history entry once it has finished, else None."""
        response = self._request("GET", f"/history/{prompt_id}", timeout=timeout_s)
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status_code} to /history")
        return read_history(_parse(response.content), prompt_id)

    def is_queued(self, prompt_id: str, *, timeout_s: float = POLL_TIMEOUT_S) -> bool:
        """Whether the prompt is running or waiting in ComfyUI's queue."""
        queue = self._get_json("/queue", timeout=timeout_s)
        for key in ("queue_running", "queue_pending"):
            items = queue.get(key)
            for item in items if isinstance(items, list) else []:
                if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                    return True
        return False

    # --- HTTP plumbing -------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        try:
            return self._http.request(method, self.base_url + path, **kwargs, **extra)
        except httpx.HTTPError as exc:
            raise ComfyUnavailable(
                f"ComfyUI at {self.base_url} did not answer {method} {path}: {type(exc).__name__}"
            ) from exc

    def _get_json(self, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        response = self._request("GET", path, timeout=timeout)
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered HTTP {response.status_code} to {path}")
        return _json_object(response.content, path)


def _parse(body: bytes) -> object:
    """A JSON answer's value, or None if it is not JSON (as httpx's `Response.json`)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _json_object(body: bytes, path: str) -> dict[str, Any]:
    value = _parse(body)
    if not isinstance(value, dict):
        raise ComfyUnavailable(f"ComfyUI's answer to {path} is not a JSON object")
    return value
