"""Inputs without a public URL: uploads, presigned PUTs, inline base64, and their fetch.

Every way in ends as an upload record (`app.store.uploads`) plus an object under
`uploads/{tenant}/{user}/{id}`, and a job names it as `InputSpec(name, upload_id)` in the
same `inputs` list as URL inputs, so every check that reads input names sees it. The
bytes are sniffed when they arrive (415 for anything that is not media we accept) and
checked in full (`check_media`) when a job fetches them; a presigned PUT is seen first at
fetch, which checks its real size and sniffed type against what the client declared.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from app.adapters.media import SNIFF_BYTES, accepted_content_type, is_accepted_type
from app.adapters.storage import UPLOADS_PREFIX, DirectUploads, upload_object_key
from app.core.errors import (
    DirectUploadUnavailable,
    FetchFailed,
    InvalidInlineData,
    InvalidRequest,
    ObjectNotFound,
    UnsupportedUpload,
    UploadTooLarge,
)
from app.core.ids import new_upload_id
from app.core.models import InputSpec, Job
from app.core.schemas import InputField
from app.engine.deps import Deps
from app.store.uploads import UploadRecord, UploadStore

_DATA_URL_MARK = ";base64,"


@dataclass(frozen=True, slots=True)
class DirectUpload:
    """A presigned PUT handed to a client."""

    record: UploadRecord
    put_url: str
    headers: dict[str, str]


def uploads(deps: Deps) -> UploadStore:
    return UploadStore(deps.backend)


def _new_record(
    deps: Deps, tenant_id: str, user_id: str, content_type: str, size: int, *, direct: bool
) -> UploadRecord:
    now = deps.clock()
    upload_id = new_upload_id()
    return UploadRecord(
        id=upload_id,
        tenant_id=tenant_id,
        user_id=user_id,
        key=upload_object_key(tenant_id, user_id, upload_id),
        content_type=content_type,
        size=size,
        created_at=now,
        expires_at=now + deps.settings.upload_ttl_s,
        direct=direct,
    )


def create_upload(deps: Deps, tenant_id: str, user_id: str, data: bytes) -> UploadRecord:
    """Store `data` as the user's upload; `UploadTooLarge` (413), `UnsupportedUpload` (415)."""
    limit = deps.settings.upload_max_bytes
    if len(data) > limit:
        raise UploadTooLarge(f"the file is {len(data)} bytes, over the limit of {limit}")
    if not data:
        raise InvalidRequest("the file is empty")
    content_type = accepted_content_type(data[:SNIFF_BYTES])
    if content_type is None:
        raise UnsupportedUpload()
    record = _new_record(deps, tenant_id, user_id, content_type, len(data), direct=False)
    deps.objects.put_bytes(record.key, data, content_type)
    uploads(deps).save(record)  # after the bytes: a record never names a missing object
    return record


def create_direct_upload(
    deps: Deps, tenant_id: str, user_id: str, content_type: str, size: int
) -> DirectUpload:
    """A presigned PUT for `size` bytes of `content_type` (S3 storage only)."""
    store = deps.objects
    if not isinstance(store, DirectUploads):
        raise DirectUploadUnavailable()
    limit = deps.settings.upload_max_bytes
    if size > limit:
        raise UploadTooLarge(f"the declared size {size} is over the limit of {limit}")
    if not is_accepted_type(content_type):
        raise UnsupportedUpload(f"{content_type} is not a media type this service accepts")
    record = _new_record(deps, tenant_id, user_id, content_type, size, direct=True)
    # The link lives no longer than the upload, so nothing is written after cleanup.
    expires_s = min(deps.settings.presign_expiry_s, deps.settings.upload_ttl_s)
    url, headers = store.presign_put(
        record.key, content_type=content_type, size=size, expires_s=expires_s
    )
    uploads(deps).save(record)
    return DirectUpload(record=record, put_url=url, headers=headers)


def decode_inline(name: str, data: str) -> bytes:
    """The bytes of an inline input: base64, optionally as a `data:` URL."""
    if data.startswith("data:") and _DATA_URL_MARK in data:
        data = data.split(_DATA_URL_MARK, 1)[1]
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInlineData(f"input {name!r}: data is not valid base64") from exc


def resolve_inputs(
    deps: Deps, tenant_id: str, user_id: str, inputs: list[InputField]
) -> list[InputSpec]:
    """The job's `InputSpec`s: inline data stored as uploads, upload ids checked as owned.

    Raises `UploadNotFound` (404, also for another tenant's or user's id), `UploadExpired`
    (410), `InvalidInlineData` (400), `UploadTooLarge` (413) or `UnsupportedUpload` (415).
    """
    now = deps.clock()
    store = uploads(deps)
    decoded = {i.name: decode_inline(i.name, i.data) for i in inputs if i.data is not None}
    total, limit = sum(len(d) for d in decoded.values()), deps.settings.inline_input_max_bytes
    if total > limit:
        raise UploadTooLarge(
            f"inline inputs are {total} bytes decoded, over the limit of {limit}; "
            "send larger files to POST /v1/uploads"
        )
    specs: list[InputSpec] = []
    for item in inputs:
        if item.upload_id is not None:
            store.owned(tenant_id, user_id, item.upload_id, now)
            specs.append(InputSpec(name=item.name, upload_id=item.upload_id))
        elif item.data is not None:
            record = create_upload(deps, tenant_id, user_id, decoded[item.name])
            specs.append(InputSpec(name=item.name, upload_id=record.id))
        else:
            specs.append(InputSpec(name=item.name, url=item.url or ""))
    return specs


def fetch_upload(deps: Deps, job: Job, spec: InputSpec, dest: Path) -> int:
    """Copy the job's upload to `dest`; raises FetchFailed naming what is wrong.

    A presigned PUT's object is checked here first: its real size against the declared
    one, and its sniffed type against the declared type (`check_media` then decodes it).
    """
    assert spec.upload_id is not None
    record = uploads(deps).find(spec.upload_id)
    if record is None or (record.tenant_id, record.user_id) != (job.tenant_id, job.user_id):
        raise FetchFailed(f"input {spec.name!r}: the upload is gone (expired and removed)")
    size = deps.objects.size_of(record.key)
    if size is None:
        raise FetchFailed(f"input {spec.name!r}: nothing was uploaded for {record.id}")
    if size > deps.settings.upload_max_bytes or (record.direct and size != record.size):
        raise FetchFailed(
            f"input {spec.name!r}: the uploaded object is {size} bytes, "
            f"not the {record.size} bytes declared"
        )
    try:
        written = deps.objects.get_file(record.key, dest)
    except ObjectNotFound as exc:
        raise FetchFailed(f"input {spec.name!r}: the upload is gone") from exc
    with dest.open("rb") as file:
        sniffed = accepted_content_type(file.read(SNIFF_BYTES))
    if record.direct and sniffed != record.content_type:
        raise FetchFailed(
            f"input {spec.name!r}: the uploaded file is {sniffed or 'not media we accept'}, "
            f"not the declared {record.content_type}"
        )
    return written


def remove_expired(deps: Deps) -> int:
    """Delete expired uploads, object first (cleanup's part; returns the count).

    Then any object under `uploads/` older than the upload lifetime: its record was
    written before it, so that record has expired too (this catches an object whose
    record was never saved, e.g. a crash between the two writes).
    """
    now = deps.clock()
    store = uploads(deps)
    removed = 0
    for record in list(store.expired(now)):
        deps.objects.delete_keys([record.key])
        store.delete(record.id)
        removed += 1
    stale = deps.objects.list_older_than(f"{UPLOADS_PREFIX}/", now - deps.settings.upload_ttl_s)
    deps.objects.delete_keys(stale)
    return removed + len(stale)
