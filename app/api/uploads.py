"""`POST /v1/uploads`: inputs without a public URL, scoped to the caller's tenant and user.

Three bodies, told apart by `Content-Type`:

* `multipart/form-data`: the first file part (a browser form or `curl -F file=@p.png`);
* `application/json` `{"content_type", "size"}` (and an optional `name`): on S3 storage,
  a presigned PUT bounded to exactly that length, so a large file never passes through
  the ingress (fetch checks its real size and type before any job uses it);
* anything else: the raw body is the file.

The answer names an `upload_id` a job uses as `{"name": "photo.png", "upload_id": ...}`.
The body limit of this route is `upload_max_bytes` (plus room for multipart framing);
the type comes from the bytes, never from the client's header.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, ConfigDict, Field

from app.api.http_errors import error_doc
from app.api.ingress import DepsDep, TenantDep, UserDep, raw_body
from app.api.submissions import parse_model
from app.core.errors import InvalidRequest
from app.engine.uploads import create_direct_upload, create_upload, uploads
from app.store.uploads import UploadRecord

UPLOADS_PATH = "/v1/uploads"
#: Multipart framing allowed on top of `upload_max_bytes` (boundaries, part headers).
MULTIPART_SLACK_BYTES = 64 * 1024

uploads_router = APIRouter()


class DirectUploadRequest(BaseModel):
    """Ask for a presigned PUT (S3 storage) instead of sending the file here."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=128, description="For your records.")
    content_type: str = Field(max_length=100, description="e.g. image/png; checked at fetch.")
    size: int = Field(ge=1, description="Exact length in bytes; the PUT must send this.")


class UploadView(BaseModel):
    """An upload: name it in a job's `inputs` as `{"name": ..., "upload_id": ...}`."""

    upload_id: str
    content_type: str
    size: int
    expires_at: float
    #: For a presigned upload: PUT the file here with exactly `headers`.
    put_url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_doc("Empty body, bad multipart, or presigned uploads without S3 storage."),
    401: error_doc("Missing, invalid or revoked API key."),
    413: error_doc("The file (or the declared size) is over `upload_max_bytes`."),
    415: error_doc("The bytes are not an image, video or audio type this service accepts."),
    422: error_doc("A header or the JSON body is not valid."),
}


def view_of(record: UploadRecord) -> UploadView:
    return UploadView(
        upload_id=record.id,
        content_type=record.content_type,
        size=record.size,
        expires_at=record.expires_at,
    )


def multipart_file(content_type: str, body: bytes) -> bytes:
    """The first file part of a multipart/form-data body (the stdlib's MIME parser)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise InvalidRequest("the multipart body could not be read")
    for part in message.iter_parts():
        if isinstance(part, EmailMessage) and part.get_filename() is not None:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload
    raise InvalidRequest("the multipart body has no file part")


@uploads_router.post(
    UPLOADS_PATH,
    status_code=201,
    tags=["uploads"],
    responses=_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
                "application/json": {"schema": DirectUploadRequest.model_json_schema()},
            },
        }
    },
)
def post_upload(
    deps: DepsDep,
    tenant: TenantDep,
    user_id: UserDep,
    body: Annotated[bytes, Depends(raw_body)],
    content_type: Annotated[str, Header(alias="Content-Type")] = "application/octet-stream",
) -> UploadView:
    """Upload an input file (raw body or multipart), or ask for a presigned PUT (JSON)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        wanted = parse_model(DirectUploadRequest, body)
        direct = create_direct_upload(
            deps, tenant.id, user_id, wanted.content_type.strip().lower(), wanted.size
        )
        return view_of(direct.record).model_copy(
            update={"put_url": direct.put_url, "headers": direct.headers}
        )
    data = multipart_file(content_type, body) if media_type == "multipart/form-data" else body
    return view_of(create_upload(deps, tenant.id, user_id, data))


@uploads_router.get(
    f"{UPLOADS_PATH}/{{upload_id}}",
    tags=["uploads"],
    responses={404: error_doc("No such upload for this user."), 410: error_doc("Expired.")},
)
def read(deps: DepsDep, tenant: TenantDep, user_id: UserDep, upload_id: str) -> UploadView:
    """One of the caller's uploads (another tenant's or user's id reads as missing)."""
    return view_of(uploads(deps).owned(tenant.id, user_id, upload_id, deps.clock()))
