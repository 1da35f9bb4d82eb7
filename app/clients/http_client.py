"""An HTTP client for the ingress API, used by the command line (and usable from scripts).

Errors come back as `HttpApiError` carrying the server's `{"error": {...}}` code and
message; transport failures as `ApiUnreachable`. Output downloads never send the API key:
the links are presigned, and S3 refuses presigned requests that also carry credentials.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from app.clients.sse import ServerEvent, parse_events
from app.core.errors import (
    ApiClientError,
    ApiUnreachable,
    HttpApiError,
    WaitTimedOut,
)
from app.core.models import TERMINAL_STATUSES, JobStatus, Stage, StatusDetail
from app.core.polling import poll_until_ended
from app.core.schemas import JobView
from app.engine.views import JobList

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_M = TypeVar("_M", JobView, JobList)
_ENDED = TERMINAL_STATUSES
_ENDED_TYPES = frozenset(status.value for status in TERMINAL_STATUSES)


def view_after(view: JobView, event: ServerEvent) -> JobView:
    """The job view as an event changes it (the stream carries no whole views)."""
    data = event.data
    if event.type == "started":
        stage = Stage(data["stage"])
        waiting = view.detail if stage is Stage.RENDER else None
        return view.model_copy(
            update={"status": JobStatus.RUNNING, "stage": stage, "detail": waiting}
        )
    if event.type == "status":
        known = {d.value for d in StatusDetail}
        said = data.get("detail")
        return view.model_copy(
            update={"detail": StatusDetail(said) if said in known else view.detail}
        )
    if event.type == "progress":
        node = {
            k: data.get(k)
            for k in ("node_id", "node_type", "value", "max", "nodes_done", "nodes_total")
        }
        return view.model_copy(
            update={
                "status": JobStatus.RUNNING,
                "detail": StatusDetail.RENDERING,
                "progress": float(data.get("fraction") or view.progress),
                "progress_detail": node,
            }
        )
    return view


class ApiClient:
    """Calls `/v1/jobs` as one user of one tenant."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        user_id: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        proxy_headers: Mapping[str, str] | None = None,
    ) -> None:
        """`proxy_headers`: Modal's `Modal-Key`/`Modal-Secret` for a deployment with
        proxy auth (`app.clients.proxy_auth`); sent to the API only, never to downloads."""
        self.api_url = api_url.rstrip("/")
        headers = {
            **(proxy_headers or {}),
            "Authorization": f"Bearer {api_key}",
            "X-User-ID": user_id,
        }
        self._http = httpx.Client(
            base_url=self.api_url,
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            trust_env=False,
        )
        self._plain = httpx.Client(timeout=timeout_s, transport=transport, trust_env=False)
        #: What `wait` reads and sleeps with; tests hand in a fake clock.
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        """Close the connections."""
        self._http.close()
        self._plain.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiUnreachable(f"{self.api_url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"cannot reach {self.api_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    def submit(self, body: Mapping[str, Any], *, idempotency_key: str | None = None) -> JobView:
        """POST /v1/jobs; the job's first view."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._call("POST", "/v1/jobs", json=dict(body), headers=headers)
        return _parse(JobView, response)

    def upload(self, data: bytes) -> dict[str, Any]:
        """POST /v1/uploads with the file as the raw body; the upload's view
        (`upload_id`, `content_type`, `size`, `expires_at`)."""
        headers = {"Content-Type": "application/octet-stream"}
        return _json(self._call("POST", "/v1/uploads", content=data, headers=headers))

    def upload_file(self, path: Path) -> dict[str, Any]:
        """Upload a local file (see `upload`)."""
        return self.upload(path.read_bytes())

    def get(self, job_id: str) -> JobView:
        """GET /v1/jobs/{id}."""
        return _parse(JobView, self._call("GET", f"/v1/jobs/{_segment(job_id)}"))

    def cancel(self, job_id: str) -> JobView:
        """DELETE /v1/jobs/{id}."""
        return _parse(JobView, self._call("DELETE", f"/v1/jobs/{_segment(job_id)}"))

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobList:
        """GET /v1/jobs: one page of the user's jobs, newest first."""
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = status.value
        if cursor is not None:
            params["cursor"] = cursor
        return _parse(JobList, self._call("GET", "/v1/jobs", params=params))

    # ---- workflow templates (tenant-wide; the user header is ignored) ------------------

    def push_workflow(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/workflows: a new version; its view (id, input_schema, ...)."""
        return _json(self._call("POST", "/v1/workflows", json=dict(body)))

    def list_workflows(self) -> list[dict[str, Any]]:
        """GET /v1/workflows: the tenant's templates with their versions."""
        listed: list[dict[str, Any]] = _json(self._call("GET", "/v1/workflows"))["workflows"]
        return listed

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        """GET /v1/workflows/{name[@version]}: one version with its JSON Schema."""
        return _json(self._call("GET", f"/v1/workflows/{_segment(workflow_id)}"))

    def delete_workflow(self, workflow_id: str) -> list[str]:
        """DELETE /v1/workflows/{name[@version]}: the ids deleted."""
        deleted: list[str] = _json(self._call("DELETE", f"/v1/workflows/{_segment(workflow_id)}"))[
            "deleted"
        ]
        return deleted

    def set_latest(self, name: str, version: int) -> dict[str, Any]:
        """PUT /v1/workflows/{name}/latest."""
        path = f"/v1/workflows/{_segment(name)}/latest"
        return _json(self._call("PUT", path, json={"version": version}))

    def events(
        self, job_id: str, *, after: int = 0, read_timeout_s: float = 60.0
    ) -> Iterator[ServerEvent]:
        """GET /v1/jobs/{id}/events from the event after `after`, until the stream ends."""
        path = f"/v1/jobs/{_segment(job_id)}/events"
        headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        try:
            with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response)
                yield from parse_events(response.iter_lines())
        except httpx.TimeoutException as exc:
            raise ApiUnreachable(f"{self.api_url} sent no event in time") from exc
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"the event stream from {self.api_url} broke: {exc}") from exc

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float,
        poll_s: float = 1.0,
        on_update: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Follow the job's event stream until it ends; raises `WaitTimedOut`.

        A dropped stream is resumed after the last event seen (`Last-Event-ID`); a server
        without the events route (404 on it while the job exists) is polled instead.
        """
        deadline = self.clock() + timeout_s
        view = self.get(job_id)
        seen = 0
        while view.status not in _ENDED:
            left_s = deadline - self.clock()
            if left_s <= 0:
                raise WaitTimedOut(f"job {job_id} did not end within {timeout_s:g} s")
            try:
                for event in self.events(job_id, after=seen, read_timeout_s=min(left_s, 60.0)):
                    seen = event.id
                    if event.type in _ENDED_TYPES:
                        break
                    view = view_after(view, event)
                    if on_update is not None:
                        on_update(view)
                    if self.clock() >= deadline:
                        break
            except HttpApiError as exc:
                if exc.status != 404:
                    raise
                return self._poll(job_id, timeout_s=left_s, poll_s=poll_s, on_update=on_update)
            except ApiUnreachable:
                self.sleep(min(poll_s, max(0.0, deadline - self.clock())))
            view = self.get(job_id)
        if on_update is not None:
            on_update(view)
        return view

    def _poll(
        self,
        job_id: str,
        *,
        timeout_s: float,
        poll_s: float = 1.0,
        on_update: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Poll until the job ends; raises `WaitTimedOut`."""

        def fetch() -> JobView:
            view = self.get(job_id)
            if on_update is not None:
                on_update(view)
            return view

        def timed_out(last: JobView | None) -> NoReturn:
            raise WaitTimedOut(f"job {job_id} did not end within {timeout_s:g} s")

        return poll_until_ended(
            fetch,
            timeout_s=timeout_s,
            poll_s=poll_s,
            on_timeout=timed_out,
            clock=self.clock,
            sleep=self.sleep,
        )

    def download_outputs(self, view: JobView, out_dir: Path) -> list[Path]:
        """Save every output of a job under `out_dir`; returns the files written."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for index, output in enumerate(view.outputs):
            target = out_dir / local_name(output.filename, index, {p.name for p in written})
            self._download(output.url, target)
            written.append(target)
        return written

    def _download(self, url: str, target: Path) -> None:
        partial = target.with_name(f".{target.name}.part")
        try:
            with self._plain.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response)
                with partial.open("wb") as file:
                    for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                        file.write(chunk)
            partial.replace(target)
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"download of {target.name} failed: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)


def local_name(filename: str, index: int, taken: set[str]) -> str:
    """A safe local basename for a server-given filename, unique among `taken`."""
    base = _UNSAFE.sub("_", filename.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")
    base = base or f"output-{index}"
    return base if base not in taken else f"{index:02d}-{base}"


def _segment(job_id: str) -> str:
    """The id as one path segment (a `/` or `..` in it cannot reach another route)."""
    segment = quote(job_id, safe="")
    return segment.replace(".", "%2E") if segment.strip(".") == "" else segment


def _error_of(response: httpx.Response) -> HttpApiError:
    try:
        body = response.json()
        error = body["error"]
        return HttpApiError(response.status_code, str(error["code"]), str(error["message"]), body)
    except (ValueError, KeyError, TypeError):
        text = response.text[:200].strip() or response.reason_phrase
        return HttpApiError(response.status_code, "http_error", text, {})


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise ApiClientError("unexpected answer from the API: not JSON") from exc
    if not isinstance(body, dict):
        raise ApiClientError("unexpected answer from the API: not an object")
    return body


def _parse(model: type[_M], response: httpx.Response) -> _M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ApiClientError(f"unexpected answer from the API: {exc.error_count()} errors") from exc
