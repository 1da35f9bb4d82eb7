"""Output storage: one `ObjectStore` protocol, S3/R2 and local-folder implementations.

`open_store(settings)` picks the implementation; stages only see the protocol.
"""

from __future__ import annotations

import time

from app.adapters.storage.base import (
    UPLOADS_PREFIX,
    DirectUploads,
    ObjectStore,
    check_key,
    content_disposition,
    job_prefix,
    output_key,
    require_safe_key,
    safe_filename,
    upload_object_key,
)
from app.adapters.storage.local import LocalStore
from app.adapters.storage.memory import MemoryStore
from app.adapters.storage.signing import load_signing_key
from app.core.config import Settings

__all__ = [
    "UPLOADS_PREFIX",
    "DirectUploads",
    "LocalStore",
    "MemoryStore",
    "ObjectStore",
    "check_key",
    "content_disposition",
    "job_prefix",
    "open_store",
    "output_key",
    "require_safe_key",
    "safe_filename",
    "upload_object_key",
]


def open_store(settings: Settings) -> ObjectStore:
    """The object store `settings.storage` names, ready to use."""
    if settings.storage == "s3":
        # Imported here so the local backend never pays for boto3's import.
        from app.adapters.storage.s3 import S3Store

        return S3Store.from_settings(settings)
    return LocalStore(
        settings.local_store_dir,
        settings.public_url,
        load_signing_key(settings.signing_key, settings.data_dir),
        clock=time.time,
    )
