"""Our refusals, answered with the v2 spec's statuses and codes.

The envelope is already the spec's (`{"error": {"code", "message", ...}}`, from
`app.api.http_errors`); what differs is which status and code a refusal gets, so the
v2 routes run inside `v2_errors()`, which re-raises the few that differ as `ApiError`.
Everything else keeps the common handlers' answer: 401, 503 (backend down), and the 429 of
a cap or the rate limit, which already is the spec's (429 with `Retry-After`; the code
names which limit, so a client can tell a rate limit from a cap).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.exceptions import RequestValidationError

from app.api.http_errors import (
    invalid_request_fields,
    summarize,
    validation_details,
)
from app.core.errors import (
    ApiError,
    Backpressure,
    IdempotencyConflict,
    InvalidRequest,
    QueueFull,
)
from app.engine.deps import Deps

#: Seconds a client should wait when the first use of its idempotency key is in flight.
IN_FLIGHT_RETRY_AFTER_S = 1


def bad_request(message: str, **details: Any) -> ApiError:
    """400 `invalid_request`: the body or a parameter is malformed (not the workflow)."""
    return ApiError(400, "invalid_request", message, details=details or None)


def invalid_workflow(code: str, message: str, **details: Any) -> ApiError:
    """422: the spec's answer for a workflow it will not queue (`invalid_workflow`...)."""
    return ApiError(422, code, message, details=details or None)


def _node_errors(exc: InvalidRequest) -> dict[str, list[dict[str, str]]]:
    """Problems grouped by node, the shape of the spec's `details.node_errors`."""
    grouped: dict[str, list[dict[str, str]]] = {}
    for problem in getattr(exc, "problems", None) or []:
        if problem.node_id is None:
            continue
        entry = {"reason": problem.reason}
        if problem.field is not None:
            entry["field"] = problem.field
        grouped.setdefault(problem.node_id, []).append(entry)
    node_id = getattr(exc, "node_id", None)
    if not grouped and node_id is not None:
        entry = {"reason": exc.message}
        if (field := getattr(exc, "input", None) or getattr(exc, "field", None)) is not None:
            entry["field"] = str(field)
        grouped[str(node_id)] = [entry]
    return grouped


def _from_invalid(exc: InvalidRequest) -> ApiError:
    status, located = invalid_request_fields(exc)
    if status != 400:  # 403 templates_only and the like keep their own answer
        return ApiError(status, exc.code, exc.message, **located)
    details: dict[str, Any] = {"reason_code": exc.code, **located}
    if node_errors := _node_errors(exc):
        details["node_errors"] = node_errors
    return invalid_workflow("invalid_workflow", exc.message, **details)


def _from_conflict(deps: Deps, exc: IdempotencyConflict) -> ApiError:
    # The spec tells the two cases apart: a key reused with another body is 422, a first
    # use still in flight is 409 with Retry-After. Ours raises one error for both; the
    # first job existing is what makes it a reuse (an in-flight first use has none yet).
    if exc.job_id is not None and deps.jobs.find(exc.job_id) is not None:
        return invalid_workflow("idempotency_key_reuse", str(exc))
    return ApiError(
        409,
        "idempotency_conflict",
        str(exc),
        headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_S)},
    )


@contextmanager
def v2_errors(deps: Deps) -> Iterator[None]:
    """Run a v2 route body; refusals come out with the spec's status and code."""
    try:
        yield
    except RequestValidationError as exc:
        errors = validation_details(exc.errors())
        raise bad_request(summarize(errors), errors=errors) from None
    except InvalidRequest as exc:
        raise _from_invalid(exc) from None
    except (Backpressure, QueueFull) as exc:
        raise ApiError(
            429,
            "queue_full",
            "the service is at capacity; try again shortly",
            headers={"Retry-After": str(exc.retry_after_s)},
            retry_after_s=exc.retry_after_s,
        ) from None
    except IdempotencyConflict as exc:
        raise _from_conflict(deps, exc) from None
