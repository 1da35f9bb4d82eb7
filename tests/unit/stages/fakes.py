"""In-process doubles behind the adapters' protocols, and Deps wired to them.

Nothing here sleeps or opens a socket: the HTTP client, ComfyUI and the webhook receiver
answer from scripts the tests write; the clock is a `FakeClock`; the state backend is the
memory backend and object storage the in-memory store.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from app.adapters.comfy.client import RenderResult
from app.adapters.comfy.messages import ComfyOutput, HistoryEntry
from app.adapters.comfy.previews import PreviewFrame
from app.adapters.comfy.tracker import RenderProgress
from app.adapters.net.safe_client import DownloadResult
from app.adapters.storage.memory import MemoryStore
from app.adapters.webhooks.delivery import PostResponse
from app.core.config import Settings
from app.core.errors import ComfyUnavailable, FetchFailed, RenderCancelled
from app.core.models import Job, Stage
from app.engine.deps import Deps
from app.stages import handler
from app.store.backends.memory import MemoryBackend
from tests.state_helpers import FakeClock


def png_bytes(width: int = 4, height: int = 4) -> bytes:
    """A real PNG, so fetch's media check passes."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Download:
    url: str
    dest: Path
    max_bytes: int
    timeout_s: float
    max_redirects: int


@dataclass
class Post:
    url: str
    body: bytes
    headers: dict[str, str]
    timeout_s: float


@dataclass
class FakeHttp:
    """The SSRF-safe client's two calls: `download` from `sites`, `post` from `answers`.

    A site or an answer may be an exception instance, which the call raises; `on_download`
    runs before each download (a test cancels the job there).
    """

    sites: dict[str, bytes | Exception] = field(default_factory=dict)
    answers: list[PostResponse | Exception] = field(default_factory=list)
    downloads: list[Download] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)
    on_download: Callable[[str], object] | None = None

    def download(
        self,
        url: str,
        dest: Path,
        *,
        max_bytes: int,
        timeout_s: float,
        max_redirects: int,
        should_cancel: Callable[[], bool] | None = None,
    ) -> DownloadResult:
        self.downloads.append(Download(url, dest, max_bytes, timeout_s, max_redirects))
        if self.on_download is not None:
            self.on_download(url)
        body = self.sites.get(url)
        if body is None:
            raise FetchFailed(f"HTTP 404 for {url}")
        if isinstance(body, Exception):
            raise body
        dest.write_bytes(body)
        return DownloadResult(
            final_url=url,
            size=len(body),
            declared_content_type=None,
            remote_address="203.0.113.7",
        )

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float
    ) -> PostResponse:
        self.posts.append(Post(url, body, dict(headers), timeout_s))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class RunCall:
    graph: dict[str, Any]
    prompt_id: str
    deadline_s: float


@dataclass
class FakeComfy:
    """A ComfyUI server as the render stage sees it (`ComfyClient`'s calls).

    `run` reports one progress event, runs `during_run` (a test cancels or breaks
    things there), honours `should_cancel` like the real client, raises `error` if set,
    and returns `outputs`, whose bytes `download` serves from `files`.
    """

    outputs: list[ComfyOutput] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    error: BaseException | None = None
    #: `/object_info`: by default ComfyUI is not there (intake checks structure only).
    object_info_answer: dict[str, Any] | Exception = field(default_factory=ComfyUnavailable)
    during_run: Callable[[], object] | None = None
    uploads: list[tuple[str, str, bytes]] = field(default_factory=list)
    runs: list[RunCall] = field(default_factory=list)
    #: Preview frames `run` hands to `on_preview` after its progress event.
    previews: list[PreviewFrame] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    object_info_calls: int = 0
    #: Not a loopback address: without `comfyui_base_dir` render finds no folders to wipe.
    base_url: str = "http://comfy.test:8188"

    def health(self, timeout_s: float = 3.0) -> dict[str, Any]:
        return {"system": {"argv": ["main.py"]}}

    def folder_paths(self) -> dict[str, Any]:
        return {}

    def history(self, prompt_id: str, *, timeout_s: float = 5.0) -> HistoryEntry | None:
        return None  # a prompt that did not finish left nothing the fake knows of

    def object_info(self) -> dict[str, Any]:
        self.object_info_calls += 1
        if isinstance(self.object_info_answer, Exception):
            raise self.object_info_answer
        return self.object_info_answer

    def upload_input(self, data: bytes, filename: str, subfolder: str) -> str:
        self.uploads.append((filename, subfolder, data))
        return f"{subfolder}/{filename}"

    def run(
        self,
        workflow: dict[str, Any],
        *,
        prompt_id: str,
        deadline_s: float,
        should_cancel: Callable[[], bool],
        on_progress: Callable[[RenderProgress], None],
        progress_interval_s: float = 0.5,
        poll_interval_s: float = 0.25,
        on_preview: Callable[[PreviewFrame], None] | None = None,
    ) -> RenderResult:
        self.runs.append(RunCall(workflow, prompt_id, deadline_s))
        on_progress(RenderProgress(0.5, "2", "SaveImage", 1, 2, 1, 2))
        for frame in self.previews:
            if on_preview is not None:
                on_preview(frame)
        if self.during_run is not None:
            self.during_run()
        if should_cancel():
            raise RenderCancelled()
        if self.error is not None:
            raise self.error
        return RenderResult(outputs=list(self.outputs), cached=False, elapsed_s=0.0)

    def download(self, output: ComfyOutput, dest: Path) -> int:
        data = self.files[output.filename]
        dest.write_bytes(data)
        return len(data)

    def delete_pending(self, prompt_id: str) -> None:
        self.abandoned.append(f"delete:{prompt_id}")

    def interrupt(self, prompt_id: str) -> None:
        self.abandoned.append(f"interrupt:{prompt_id}")


@dataclass
class World:
    """Deps on the memory backend with every adapter replaced by a double."""

    deps: Deps
    clock: FakeClock
    http: FakeHttp
    comfy: FakeComfy
    objects: MemoryStore

    def step(self, stage: Stage) -> int:
        """Handle every message now on `stage`'s queue, as its worker would."""
        handle = handler(stage, self.deps)
        done = 0
        while (raw := self.deps.queue(stage).get()) is not None:
            handle(raw)
            done += 1
        return done

    def job(self, job_id: str) -> Job:
        return self.deps.jobs.get(job_id)

    def queued(self, stage: Stage) -> int:
        return self.deps.queue(stage).len()


def make_world(tmp_path: Path, **settings: Any) -> World:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "stage_lease_s": 100,
        "stage_max_attempts": 3,
    }
    values.update(settings)
    clock = FakeClock()
    http, comfy, objects = FakeHttp(), FakeComfy(), MemoryStore(clock)
    deps = Deps(settings=Settings(**values), backend=MemoryBackend(), clock=clock)
    # The adapters are cached properties: an instance attribute takes their place.
    vars(deps).update(http=http, comfy=comfy, objects=objects)
    return World(deps, clock, http, comfy, objects)
