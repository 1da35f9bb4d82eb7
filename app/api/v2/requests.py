"""A v2 create body and headers, read into our `JobRequest` (or refused as the spec says).

400 `invalid_request`: not JSON, not an object, an unknown field, a bad header.
422: the workflow itself: missing or not an object (`invalid_workflow`), a UI export
(`workflow_format_ui`), a `core/ASSET` reference (`missing_asset`: no assets here), or a
field the spec reserves that this server does not take (`unsupported_field`).
"""

from __future__ import annotations

import json
from typing import Any

from app.api.submissions import parse_model
from app.api.v2.errors import bad_request, invalid_workflow
from app.api.v2.schemas import V2JobCreate
from app.core.schemas import USER_ID, JobRequest

#: Fields a v2 client may send that this server refuses (docs/api-v2.md says why).
UNSUPPORTED_FIELDS = ("webhook_url", "inputs", "extra_data", "priority")
#: The user a v2 caller without `X-User-ID` acts as: v2 keys are account-scoped.
DEFAULT_USER = "default"
MAX_IDEMPOTENCY_KEY = 255


def user_of(header: str | None) -> str:
    """`X-User-ID` if given (our pattern), else the tenant's `DEFAULT_USER`."""
    if header is None:
        return DEFAULT_USER
    if not USER_ID.fullmatch(header):
        raise bad_request("X-User-ID must match " + USER_ID.pattern, header="X-User-ID")
    return header


def idempotency_key_of(header: str | None) -> str | None:
    """The key, or None; an empty or over-long one is malformed, not "no key"."""
    if header is None:
        return None
    if not header or len(header) > MAX_IDEMPOTENCY_KEY:
        raise bad_request(
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters",
            header="Idempotency-Key",
        )
    return header


def _asset_reference(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("__type") == "core/ASSET" or any(
            _asset_reference(v) for v in value.values()
        )
    if isinstance(value, list):
        return any(_asset_reference(v) for v in value)
    return False


def _check_workflow(workflow: Any) -> None:
    if not isinstance(workflow, dict) or not workflow:
        raise invalid_workflow(
            "invalid_workflow", "workflow must be a non-empty API-format graph (an object)"
        )
    if isinstance(workflow.get("nodes"), list) and "links" in workflow:
        raise invalid_workflow(
            "workflow_format_ui",
            "this is a UI-export graph; export the workflow in API format instead",
        )
    for node_id, node in workflow.items():
        if isinstance(node, dict) and _asset_reference(node.get("inputs")):
            raise invalid_workflow(
                "missing_asset",
                f"node {node_id}: core/ASSET references are not supported by this server; "
                "pass inputs through /v1/jobs instead",
                node_id=str(node_id),
            )


def job_request_of(raw: bytes) -> JobRequest:
    """The v2 body as our request; raises `ApiError` (400/422) as the module says."""
    try:
        document = json.loads(raw)
    except ValueError:
        raise bad_request("the body must be a JSON object") from None
    if not isinstance(document, dict):
        raise bad_request("the body must be a JSON object")
    for name in UNSUPPORTED_FIELDS:
        if name in document:
            raise invalid_workflow(
                "unsupported_field", f"{name} is not supported by this server", field=name
            )
    if "workflow" not in document:
        raise invalid_workflow("invalid_workflow", "missing 'workflow' (an API-format graph)")
    _check_workflow(document["workflow"])
    body = parse_model(V2JobCreate, document)  # unknown fields: 400 (via v2_errors)
    return JobRequest(workflow=body.workflow, metadata=body.metadata)
