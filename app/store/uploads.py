"""Upload records: who owns an uploaded input, where its bytes are, until when it lives.

An upload belongs to one (tenant, user); it is found only through `owned`, which answers
another owner's id exactly as a missing one (`UploadNotFound`), so an id leaks nothing.
The bytes live in the object store under `upload_object_key`; this module keeps only the
record. Cleanup removes a record (and its object) once `expires_at` has passed.
"""

from __future__ import annotations

from collections.abc import Iterator

from app.core.errors import UploadExpired, UploadNotFound
from app.core.ids import UPLOAD_ID
from app.core.models import Record
from app.store.backends.base import KV, Backend
from app.store.keys import UPLOADS_DICT, parse_upload_key, upload_key


class UploadRecord(Record):
    """One uploaded input."""

    id: str
    tenant_id: str
    user_id: str
    #: Object store key of the bytes.
    key: str
    content_type: str
    #: Bytes stored; for a presigned PUT the size the client declared (fetch checks it).
    size: int
    created_at: float
    expires_at: float
    #: Written by the client with a presigned PUT: unseen until fetch checks it.
    direct: bool = False

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class UploadStore:
    """The `uploads` dict, keyed by upload id."""

    def __init__(self, backend: Backend) -> None:
        self.kv: KV = backend.kv(UPLOADS_DICT)

    def save(self, record: UploadRecord) -> None:
        self.kv.put(upload_key(record.id), record.model_dump_json())

    def find(self, upload_id: str) -> UploadRecord | None:
        """The record, whoever owns it (for the stages, which know the job's owner)."""
        if not UPLOAD_ID.fullmatch(upload_id):
            return None
        raw = self.kv.get(upload_key(upload_id))
        return None if raw is None else UploadRecord.model_validate_json(raw)

    def owned(self, tenant_id: str, user_id: str, upload_id: str, now: float) -> UploadRecord:
        """The caller's own live upload; `UploadNotFound` (also for another owner's id)
        or `UploadExpired`."""
        record = self.find(upload_id)
        if record is None or (record.tenant_id, record.user_id) != (tenant_id, user_id):
            raise UploadNotFound(f"no such upload {upload_id!r} for this user")
        if record.expired(now):
            raise UploadExpired(f"upload {upload_id} has expired; upload the file again")
        return record

    def delete(self, upload_id: str) -> None:
        self.kv.pop(upload_key(upload_id))

    def expired(self, now: float) -> Iterator[UploadRecord]:
        """Records past their expiry (a scan of live uploads only: expired ones go)."""
        for key in list(self.kv.keys()):
            raw = self.kv.get(key)
            if raw is None:
                continue
            record = UploadRecord.model_validate_json(raw)
            if record.expired(now) and parse_upload_key(key) == record.id:
                yield record
