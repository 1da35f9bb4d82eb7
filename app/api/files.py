"""`/files/{key}`: downloads from the local folder store behind signed, expiring links.

Only the local store serves files this way; with S3 the links point at the bucket and
this route answers 404. The signature covers the key, the expiry and the two response
headers, so a link cannot be bent to another file or another content type.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from app.adapters.storage import LocalStore, content_disposition
from app.api.http_errors import error_doc
from app.core.errors import ApiError
from app.engine.deps import Deps

files_router = APIRouter()

_Param = Annotated[str, Query(max_length=1024)]


def _deps(request: Request) -> Deps:
    deps: Deps = request.app.state.deps
    return deps


_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The file.", "content": {"application/octet-stream": {}}},
    403: error_doc("Bad or expired signature."),
    404: error_doc("No such file."),
}


@files_router.get(
    "/files/{key:path}",
    tags=["files"],
    response_class=FileResponse,
    responses=_FILE_RESPONSES,
)
def download(
    deps: Annotated[Deps, Depends(_deps)],
    key: str,
    expires: _Param = "",
    filename: _Param = "",
    content_type: _Param = "",
    sig: _Param = "",
) -> FileResponse:
    """A stored output, if the link's signature verifies and has not expired."""
    store = deps.objects
    if not isinstance(store, LocalStore):
        raise ApiError(404, "not_found", "files are served by the object store")
    # Raises SignedUrlInvalid/SignedUrlExpired (403) or ObjectNotFound (404).
    path, media_type, name = store.open_signed(key, expires, sig, filename, content_type)
    return FileResponse(
        path,
        media_type=media_type,
        headers={
            "Content-Disposition": content_disposition(name),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
        },
    )
