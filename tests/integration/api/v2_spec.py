"""A client for Comfy's v2 job API written from its spec only (Comfy-Org/comfy-api-proxy,
spec/openapi.yaml, version 2.0.0), and that spec's `Job` and `ErrorEnvelope` schemas
transcribed to JSON Schema (OpenAPI 3.0 `nullable` written as a `null` type).

It knows nothing of our own API: no `X-User-ID` unless a test adds it, no `/v1` routes;
it follows the links a job embeds (`urls.self`, `urls.cancel`, `urls.events`) rather than
building URLs, as the spec asks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import jsonschema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


_STRING = {"type": "string"}
PROGRESS = {
    "type": "object",
    "required": ["value", "nodes_done", "nodes_total"],
    "properties": {
        "value": {"type": "number", "minimum": 0, "maximum": 1},
        "nodes_done": {"type": "integer"},
        "nodes_total": {"type": "integer"},
        "current_node": _nullable(_STRING),
        "current_node_class": _nullable(_STRING),
        "step": _nullable({"type": "integer"}),
        "steps": _nullable({"type": "integer"}),
        "message": _nullable(_STRING),
    },
}
OUTPUT = {
    "type": "object",
    "required": [
        "node_id",
        "name",
        "type",
        "content_type",
        "size_bytes",
        "id",
        "hash",
        "url",
        "url_expires_at",
    ],
    "properties": {
        "node_id": _STRING,
        "name": _STRING,
        "type": {"enum": ["image", "video", "audio", "text", "file", "latent"]},
        "content_type": _STRING,
        "size_bytes": {"type": "integer"},
        "id": _STRING,
        "hash": _nullable(_STRING),
        "url": _STRING,
        "url_expires_at": _STRING,
    },
}
JOB_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": _STRING,
        "message": _STRING,
        "node_id": _nullable(_STRING),
        "class_type": _nullable(_STRING),
        "traceback": _nullable(_STRING),
    },
}
STATUSES = ["queued", "running", "succeeded", "canceling", "canceled", "failed", "expired"]
TERMINAL = {"succeeded", "canceled", "failed", "expired"}
JOB: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "status",
        "created_at",
        "started_at",
        "completed_at",
        "expires_at",
        "queue_position",
        "progress",
        "outputs",
        "error",
        "urls",
    ],
    "properties": {
        "id": _STRING,
        "status": {"enum": STATUSES},
        "created_at": _STRING,
        "started_at": _nullable(_STRING),
        "completed_at": _nullable(_STRING),
        "expires_at": _STRING,
        "queue_position": _nullable({"type": "integer"}),
        "progress": {"anyOf": [PROGRESS, {"type": "null"}]},
        "outputs": {"type": "array", "items": OUTPUT},
        "error": {"anyOf": [JOB_ERROR, {"type": "null"}]},
        "metrics": {
            "type": "object",
            "additionalProperties": {"type": ["integer", "null"]},
        },
        "urls": {
            "type": "object",
            "required": ["self", "events", "cancel"],
            "properties": {"self": _STRING, "events": _STRING, "cancel": _STRING},
        },
    },
}
ERROR_ENVELOPE = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": _STRING,
                "message": _STRING,
                "details": {"type": ["object", "null"]},
            },
        }
    },
}
STATUS_EVENT = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"enum": STATUSES}, "queue_position": _nullable({"type": "integer"})},
}
EVENT_SCHEMAS = {"status": STATUS_EVENT, "progress": PROGRESS, "output": OUTPUT}


def check_job(document: Any) -> dict[str, Any]:
    """The document if it is a spec `Job` (date-times parse too); raises otherwise."""
    jsonschema.validate(document, JOB)
    for name in ("created_at", "started_at", "completed_at", "expires_at"):
        if document[name] is not None:
            datetime.fromisoformat(document[name])
    for output in document["outputs"]:
        datetime.fromisoformat(output["url_expires_at"])
    return dict(document)


@dataclass
class ApiFailure(Exception):
    """A non-2xx answer, checked to be the spec's `ErrorEnvelope`."""

    status: int
    code: str
    message: str
    details: Any
    headers: httpx.Headers = field(repr=False)


@dataclass
class SpecClient:
    """`/api/v2/jobs` as the spec describes it, over any httpx client."""

    http: httpx.AsyncClient
    api_key: str
    extra_headers: dict[str, str] = field(default_factory=dict)

    def _headers(self, more: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", **self.extra_headers, **(more or {})}

    async def _call(
        self, method: str, url: str, *, expect: int = 200, **kwargs: Any
    ) -> httpx.Response:
        response = await self.http.request(
            method, url, headers=self._headers(kwargs.pop("headers", None)), **kwargs
        )
        if response.status_code != expect:
            body = response.json()
            jsonschema.validate(body, ERROR_ENVELOPE)
            error = body["error"]
            raise ApiFailure(
                response.status_code,
                error["code"],
                error["message"],
                error.get("details"),
                response.headers,
            )
        return response

    async def create(
        self,
        workflow: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> tuple[dict[str, Any], httpx.Response]:
        """`postJobs`: 201 with the `Job` (also on a replay, flagged by a header)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self._call(
            "POST",
            "/api/v2/jobs",
            expect=201,
            json={"workflow": workflow, **extra},
            headers=headers,
        )
        return check_job(response.json()), response

    async def get(self, job: dict[str, Any]) -> dict[str, Any]:
        """`getJob`, following the job's own `urls.self`."""
        return check_job((await self._call("GET", job["urls"]["self"])).json())

    async def get_id(self, job_id: str) -> dict[str, Any]:
        return check_job((await self._call("GET", f"/api/v2/jobs/{job_id}")).json())

    async def cancel(self, job: dict[str, Any]) -> dict[str, Any]:
        """`cancelJob`: the current job (idempotent)."""
        return check_job((await self._call("POST", job["urls"]["cancel"])).json())

    async def cancel_id(self, job_id: str) -> dict[str, Any]:
        return check_job((await self._call("POST", f"/api/v2/jobs/{job_id}/cancel")).json())

    async def list_jobs(self, **params: Any) -> dict[str, Any]:
        """The listing (the proxy's extension): `jobs` and `next_cursor`."""
        query = {k: v for k, v in params.items() if v is not None}
        body = (await self._call("GET", "/api/v2/jobs", params=query)).json()
        for job in body["jobs"]:
            check_job(job)
        assert set(body) == {"jobs", "next_cursor"}, body
        return dict(body)

    async def events(
        self, job: dict[str, Any], last_event_id: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """`getJobEvents`: every (event, data) frame until the stream ends."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        response = await self._call("GET", job["urls"]["events"], headers=headers)
        assert response.headers["content-type"].startswith("text/event-stream")
        frames: list[tuple[str, dict[str, Any]]] = []
        for block in response.text.split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in lines:
                data = json.loads(lines["data"])
                if lines["event"] in EVENT_SCHEMAS:
                    jsonschema.validate(data, EVENT_SCHEMAS[lines["event"]])
                frames.append((lines["event"], data))
        return frames
