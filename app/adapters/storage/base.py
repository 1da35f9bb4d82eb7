"""The `ObjectStore` protocol and the pure helpers every store shares: keys and filenames.

Keys are built here and nowhere else. They are deterministic (a retried upload
overwrites the same object), tenant- and user-prefixed (cleanup and audits work per
prefix), and never contain a client's filename as given: `safe_filename` reduces it to a
short ASCII basename that keeps its extension.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import quote

from app.core.errors import UploadFailed

#: Top-level prefix of every job output.
OUTPUTS_PREFIX = "outputs"
#: Top-level prefix of every uploaded input (`POST /v1/uploads`, inline base64).
UPLOADS_PREFIX = "uploads"
#: Longest basename kept from a client or ComfyUI filename (extension included).
MAX_FILENAME_CHARS = 100
_MAX_EXTENSION_CHARS = 10
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_ASCII_ALNUM = re.compile(r"[A-Za-z0-9]+")


class ObjectStore(Protocol):
    """Where outputs are stored and how clients download them.

    Contract shared by every implementation (checked by tests/contract/):

    * `put_*` is idempotent: putting a key again replaces the object whole; readers
      never see a partial object.
    * Transient failures raise `errors.StorageUnavailable` (retryable) after the store's
      own retries; permanent ones raise `errors.UploadFailed`. No library exception
      escapes.
    * `url` signs a fresh download link on every call and never stores it; the link
      forces a download (`Content-Disposition: attachment`) with the given type.
    """

    def put_file(self, key: str, path: Path, content_type: str) -> int:
        """Store the file at `path` under `key`; return the bytes stored."""
        ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> int:
        """Store `data` under `key`; return the bytes stored."""
        ...

    def url(self, key: str, *, filename: str, content_type: str, expires_s: int) -> str:
        """A download link for `key`, valid for `expires_s` seconds."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix` (not empty); return the count."""
        ...

    def delete_keys(self, keys: list[str]) -> int:
        """Delete the given objects (missing ones are skipped); return how many were asked."""
        ...

    def list_older_than(self, prefix: str, cutoff_unix: float) -> list[str]:
        """Keys under `prefix` last written before `cutoff_unix` (for retention)."""
        ...

    def remove_partial(self, cutoff_unix: float) -> int:
        """Remove what writes cut short left behind before `cutoff_unix` (a killed
        process's half-written file, an abandoned multipart upload); return the count.
        Never a stored object: readers never saw these."""
        ...

    def size_of(self, key: str) -> int | None:
        """The stored object's size in bytes, None if nothing is stored under `key`."""
        ...

    def get_file(self, key: str, dest: Path) -> int:
        """Write the object to `dest` (replacing it); return its size.

        `ObjectNotFound` if nothing is stored under `key`.
        """
        ...


@runtime_checkable
class DirectUploads(Protocol):
    """A store clients can write to directly with a presigned PUT (S3 and R2)."""

    def presign_put(
        self, key: str, *, content_type: str, size: int, expires_s: int
    ) -> tuple[str, dict[str, str]]:
        """A PUT URL for exactly `size` bytes typed `content_type`, and the headers the
        client must send with it (they are signed, so any other length is refused)."""
        ...


#: ASCII control characters (and DEL): never in a key.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_key(key: str) -> None:
    """Refuse keys that could leave the store's folder or hide files in it."""
    if not key or len(key) > 1024:
        raise ValueError("storage key must be 1 to 1024 characters")
    if key.startswith("/") or "\\" in key or _CONTROL.search(key):
        raise ValueError("storage key must be relative, without backslashes or controls")
    for segment in key.split("/"):
        if not segment or segment.startswith("."):
            raise ValueError("storage key segments must be non-empty and not start with '.'")


def require_safe_key(key: str) -> str:
    """`key` if `check_key` accepts it; otherwise the permanent `UploadFailed`."""
    try:
        check_key(key)
    except ValueError as exc:
        raise UploadFailed(f"unsafe storage key: {exc}") from exc
    return key


def safe_filename(name: str, *, default_stem: str = "output") -> str:
    """Reduce an untrusted filename to a short ASCII basename that keeps its extension."""
    base = re.split(r"[/\\]", name)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    stem, dot, extension = base.rpartition(".")
    if not dot:
        stem, extension = base, ""
    extension = "".join(_ASCII_ALNUM.findall(extension)).lower()[:_MAX_EXTENSION_CHARS]
    stem = _UNSAFE_CHARS.sub("_", stem).strip("._-")
    stem = re.sub(r"_{2,}", "_", stem) or default_stem
    suffix = f".{extension}" if extension else ""
    return stem[: MAX_FILENAME_CHARS - len(suffix)].rstrip("._-") + suffix


def _key_segment(value: str) -> str:
    """Percent-encode an id so it is one safe key segment, injectively."""
    if not value:
        raise ValueError("key segment must not be empty")
    segment = quote(value, safe="")
    # "." and ".." are the only segments quote() leaves dangerous; encode leading dots.
    if segment.startswith("."):
        segment = "%2E" + segment[1:]
    return segment


def job_prefix(tenant_id: str, user_id: str, job_id: str) -> str:
    """The prefix holding every output of one job (ends with `/`)."""
    parts = (_key_segment(tenant_id), _key_segment(user_id), _key_segment(job_id))
    return f"{OUTPUTS_PREFIX}/{'/'.join(parts)}/"


def output_key(tenant_id: str, user_id: str, job_id: str, index: int, filename: str) -> str:
    """The storage key of a job's `index`-th output, e.g. `outputs/t/u/j/00-image.png`."""
    if index < 0:
        raise ValueError("index must be >= 0")
    return f"{job_prefix(tenant_id, user_id, job_id)}{index:02d}-{safe_filename(filename)}"


def upload_object_key(tenant_id: str, user_id: str, upload_id: str) -> str:
    """The storage key of one uploaded input, e.g. `uploads/t/u/upl_...`."""
    parts = (_key_segment(tenant_id), _key_segment(user_id), _key_segment(upload_id))
    return f"{UPLOADS_PREFIX}/{'/'.join(parts)}"


def content_disposition(filename: str) -> str:
    """An ASCII `Content-Disposition: attachment` value for a filename (RFC 6266)."""
    name = re.split(r"[/\\]", filename)[-1]
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_" for c in name)
    fallback = fallback.strip() or "download"
    value = f'attachment; filename="{fallback}"'
    if name and fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value
