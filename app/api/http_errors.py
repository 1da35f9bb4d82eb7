"""One error shape for every HTTP response that is not a success, and the body-size guard.

Every error, whether raised by a route, by FastAPI's request validation, by Starlette's
routing (404, 405) or by the body limit (413), is answered as

    {"error": {"code": "<snake_case>", "message": "<one line>", ...extra fields}}

Domain exceptions are mapped to statuses here, so routes stay free of HTTP branching.
Nothing a client sends reaches the catch-all; if a bug does, the client sees a plain
`internal_error` and the traceback goes to the server log only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import (
    AdmissionRejected,
    AlreadyTerminal,
    ApiError,
    BackendError,
    Backpressure,
    IdempotencyConflict,
    InvalidRequest,
    JobNotFound,
    PipelineError,
    QueueFull,
)
from app.core.ids import is_ascii_number
from app.core.logs import get_logger

#: Statuses of `InvalidRequest` subclasses, by code; any other code is a 400.
INVALID_REQUEST_STATUS: Mapping[str, int] = {
    "url_refused": 422,
    "signed_url_invalid": 403,
    "signed_url_expired": 403,
    "not_found": 404,
    "templates_only": 403,
    "template_not_found": 404,
    "upload_not_found": 404,
    "upload_expired": 410,
    "upload_too_large": 413,
    "unsupported_media_type": 415,
}
#: IETF RateLimit policy names for each admission refusal.
RATE_POLICY_NAMES: Mapping[str, str] = {
    "rate_limited": "tenant-rate",
    "user_concurrency_limit": "user-active-jobs",
    "tenant_concurrency_limit": "tenant-active-jobs",
}
_STATUS_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}
#: How long a client should wait after a backend hiccup (503) before trying again.
UNAVAILABLE_RETRY_AFTER_S = 5


class ErrorDetail(BaseModel):
    """The inside of an error response; routes may add fields (e.g. `retry_after_s`)."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every non-2xx response body."""

    error: ErrorDetail


def error_doc(description: str) -> dict[str, Any]:
    """An OpenAPI `responses` entry: our error body, described."""
    return {"model": ErrorResponse, "description": description}


def error_response(
    http_status: int,
    code: str,
    message: str,
    /,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    """A response in the common error shape; `extra` adds fields next to code and message."""
    body = {"error": {**extra, "code": code, "message": message}}
    return JSONResponse(body, status_code=http_status, headers=dict(headers or {}))


def validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI error entries reduced to JSON-safe `loc`, `msg`, `type`.

    The raw entries carry the offending input and exception objects in `ctx`; echoing
    those back could be large, could fail to serialise, and is no help to the client.
    """
    details: list[dict[str, Any]] = []
    for entry in errors:
        if not isinstance(entry, Mapping):
            continue
        loc = [part if isinstance(part, int) else str(part) for part in entry.get("loc", ())]
        details.append(
            {
                "loc": loc,
                "msg": str(entry.get("msg", "")),
                "type": str(entry.get("type", "")),
            }
        )
    return details


def summarize(details: Sequence[Mapping[str, Any]]) -> str:
    """One line naming the first problem (and how many more there are)."""
    if not details:
        return "request is not valid"
    first = details[0]
    where = ".".join(str(part) for part in first["loc"]) or "request"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def rate_limit_headers(exc: AdmissionRejected) -> dict[str, str]:
    """`Retry-After` plus the IETF draft `RateLimit-Policy` and `RateLimit` headers."""
    policy = RATE_POLICY_NAMES.get(exc.code, exc.code)
    window = ";w=60" if exc.code == "rate_limited" else ""
    return {
        "Retry-After": str(exc.retry_after_s),
        "RateLimit-Policy": f'"{policy}";q={exc.limit}{window}',
        "RateLimit": f'"{policy}";r=0;t={exc.retry_after_s}',
    }


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, headers=exc.headers, **exc.extra)


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail) if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc.errors())
    return error_response(422, "validation_error", summarize(details), details=details)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    status, extra = invalid_request_fields(exc)
    return error_response(status, exc.code, exc.message, **extra)


def invalid_request_fields(exc: InvalidRequest) -> tuple[int, dict[str, Any]]:
    """The status of an `InvalidRequest` and the fields that locate it (node, input...)."""
    extra: dict[str, Any] = {
        name: value
        for name in ("node_id", "node_type", "input", "field")
        if (value := getattr(exc, name, None)) is not None
    }
    problems = getattr(exc, "problems", None)
    if problems:
        extra["problems"] = [p.as_dict() for p in problems]
    node_errors = getattr(exc, "node_errors", None)
    if node_errors:
        extra["node_errors"] = node_errors
    return INVALID_REQUEST_STATUS.get(exc.code, 400), extra


async def _pipeline_error(request: Request, exc: Exception) -> JSONResponse:
    # Raised by a dependency of a route (storage, ComfyUI), never by the request itself.
    assert isinstance(exc, PipelineError)
    get_logger().warning("request_dependency_failed", code=exc.code, error=exc.message)
    if exc.retryable:
        return error_response(
            503, exc.code, exc.message, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}
        )
    return error_response(500, "internal_error", "internal error")


async def _backend_error(request: Request, exc: Exception) -> JSONResponse:
    get_logger().warning("request_backend_failed", error=str(exc))
    return error_response(
        503,
        "backend_unavailable",
        "the state backend is unavailable; try again shortly",
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
    )


async def _backpressure(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Backpressure)
    return error_response(
        503,
        exc.code,
        exc.message,
        headers={"Retry-After": str(exc.retry_after_s)},
        retry_after_s=exc.retry_after_s,
    )


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    get_logger().warning("request_queue_full", queue=exc.queue)
    return error_response(
        503,
        "overloaded",
        "the service is at capacity; try again shortly",
        headers={"Retry-After": str(exc.retry_after_s)},
        retry_after_s=exc.retry_after_s,
    )


async def _admission_rejected(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AdmissionRejected)
    return error_response(
        429,
        exc.code,
        exc.message,
        headers=rate_limit_headers(exc),
        retry_after_s=exc.retry_after_s,
        limit=exc.limit,
    )


async def _idempotency_conflict(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IdempotencyConflict)
    return error_response(409, "idempotency_conflict", str(exc))


async def _already_terminal(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AlreadyTerminal)
    return error_response(
        409,
        "already_terminal",
        f"job is already {exc.job.status.value}",
        status=exc.job.status.value,
    )


async def _job_not_found(request: Request, exc: Exception) -> JSONResponse:
    return error_response(404, "not_found", "no such job")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    get_logger().error(
        "request_crashed",
        method=request.method,
        path=request.url.path,
        error_type=type(exc).__name__,
        exc_info=exc,
    )
    return error_response(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    """Render every error in the common shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(InvalidRequest, _invalid_request)
    app.add_exception_handler(PipelineError, _pipeline_error)
    app.add_exception_handler(BackendError, _backend_error)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(Backpressure, _backpressure)
    app.add_exception_handler(AdmissionRejected, _admission_rejected)
    app.add_exception_handler(IdempotencyConflict, _idempotency_conflict)
    app.add_exception_handler(AlreadyTerminal, _already_terminal)
    app.add_exception_handler(JobNotFound, _job_not_found)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, counted on the raw bytes.

    A `Content-Length` over the limit is refused before anything is read; a chunked
    body (no length) is read up to the limit and refused as soon as it passes it, so a
    client can never make the server buffer more than `max_bytes`.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        #: Routes with a limit of their own (exact paths), e.g. `POST /v1/uploads`.
        self.per_path = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope.get("path", ""), self.max_bytes)
        declared = _content_length(scope)
        if declared == -1:
            await error_response(400, "bad_request", "Content-Length is not a number")(
                scope, receive, send
            )
            return
        if declared is not None and declared > limit:
            await self._too_large(scope, receive, send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(
            413,
            "request_too_large",
            f"request body is over {limit} bytes",
            limit=limit,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    """The declared length; None if absent, -1 if malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if is_ascii_number(text) and len(text) < 19 else -1
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the buffered body once, then defers to the real one."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
