"""A folder acting as the object store, with HMAC-signed download links.

The local backend uses it in place of S3. Objects are files under `root/{key}`; the
ingress serves `/files/{key:path}` by calling `LocalStore.open_signed` with the query
parameters of the link (`expires`, `filename`, `content_type`, `sig`) and sends the file
with `Content-Type: {content_type}` and `Content-Disposition:
{content_disposition(filename)}`.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from urllib.parse import quote, urlencode

from app.adapters.storage.base import require_safe_key
from app.adapters.storage.signing import is_expired, parse_expires, sign_path, signature_matches
from app.core.errors import (
    ObjectNotFound,
    SignedUrlExpired,
    SignedUrlInvalid,
    StorageUnavailable,
    UploadFailed,
)

#: Where temporary files are written before being renamed into place; keys cannot
#: reach it because no key segment may start with a dot.
_TMP_DIR = ".tmp"
#: OS errors that say "not now" rather than "never": a full disk, a folder whose
#: permissions an operator is fixing, a flaky mount. They are retried by the stage.
#: ENOTDIR too: keys are ours, so a path part that is not a folder means the store's
#: folder itself is away (moved aside, its mount gone), not a bad key.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.EROFS,
        errno.EAGAIN,
        errno.ENOTDIR,
    }
)


def storage_error(key: str, exc: OSError) -> UploadFailed | StorageUnavailable:
    """The error tree's class for an OS error while storing `key` (no host path in it)."""
    message = f"could not store {key}: {exc.strerror or type(exc).__name__}"
    if exc.errno in TRANSIENT_ERRNOS:
        return StorageUnavailable(message)
    return UploadFailed(message)


class LocalStore:
    """An `ObjectStore` over a local folder; links are signed with `signing_key`."""

    def __init__(
        self,
        root: Path,
        public_url: str,
        signing_key: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.public_url = public_url.rstrip("/")
        self._signing_key = signing_key
        self._clock = clock

    @cached_property
    def _real_root(self) -> Path:
        """The store's folder with its links resolved, once (every key's check uses it)."""
        return self.root.resolve()

    def path_for(self, key: str) -> Path:
        """The file that holds `key`; `UploadFailed` for unsafe keys or symlinks out."""
        path = self.root / require_safe_key(key)
        if not path.resolve().is_relative_to(self._real_root):
            raise UploadFailed("storage key resolves outside the store")
        return path

    def put_file(self, key: str, path: Path, content_type: str) -> int:
        """Copy the file at `path` to `key` atomically; return its size."""
        target = self.path_for(key)
        try:
            return self._write_atomically(target, lambda tmp: shutil.copyfile(path, tmp))
        except OSError as exc:
            raise storage_error(key, exc) from exc

    def put_bytes(self, key: str, data: bytes, content_type: str) -> int:
        """Write `data` to `key` atomically; return its size."""
        target = self.path_for(key)
        try:
            return self._write_atomically(target, lambda tmp: tmp.write_bytes(data))
        except OSError as exc:
            raise storage_error(key, exc) from exc

    def url(self, key: str, *, filename: str, content_type: str, expires_s: int) -> str:
        """A link to `{public_url}/files/{key}`, signed, valid for `expires_s` seconds."""
        require_safe_key(key)
        expires = int(self._clock()) + expires_s
        sig = sign_path(self._signing_key, key, expires, filename, content_type)
        query = urlencode(
            {"expires": expires, "filename": filename, "content_type": content_type, "sig": sig}
        )
        return f"{self.public_url}/files/{quote(key, safe='/')}?{query}"

    def open_signed(
        self, key: str, expires: str | int, sig: str, filename: str, content_type: str
    ) -> tuple[Path, str, str]:
        """Check a link's parameters; return the file, its content type and filename.

        Raises `SignedUrlInvalid` (bad signature or key), `SignedUrlExpired` or
        `ObjectNotFound`.
        """
        expires_at = parse_expires(expires)
        if expires_at is None or not signature_matches(
            self._signing_key, key, expires_at, filename, content_type, sig
        ):
            raise SignedUrlInvalid()
        if is_expired(expires_at, self._clock()):
            raise SignedUrlExpired()
        try:
            path = self.path_for(key)
        except UploadFailed as exc:
            raise SignedUrlInvalid() from exc
        if not path.is_file():
            raise ObjectNotFound()
        return path, content_type, filename

    def exists(self, key: str) -> bool:
        """Whether a file is stored under `key`."""
        return self.path_for(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        """Delete every file whose key starts with `prefix`; return the count."""
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix")
        return self.delete_keys([key for key, _ in self._walk(prefix)])

    def delete_keys(self, keys: list[str]) -> int:
        """Delete the given keys (missing ones are skipped); return how many were asked."""
        for key in keys:
            path = self.path_for(key)
            path.unlink(missing_ok=True)
            self._prune_empty_dirs(path.parent)
        return len(keys)

    def list_older_than(self, prefix: str, cutoff_unix: float) -> list[str]:
        """Keys under `prefix` whose file was last written before `cutoff_unix`."""
        return sorted(key for key, mtime in self._walk(prefix) if mtime < cutoff_unix)

    def size_of(self, key: str) -> int | None:
        """The stored file's size, None if there is none."""
        path = self.path_for(key)
        try:
            return path.stat().st_size if path.is_file() else None
        except FileNotFoundError:
            return None

    def get_file(self, key: str, dest: Path) -> int:
        """Copy the stored file to `dest`; `ObjectNotFound` if there is none."""
        path = self.path_for(key)
        try:
            shutil.copyfile(path, dest)
        except FileNotFoundError as exc:
            raise ObjectNotFound() from exc
        except OSError as exc:
            raise storage_error(key, exc) from exc
        return dest.stat().st_size

    def remove_partial(self, cutoff_unix: float) -> int:
        """Delete temp files older than `cutoff_unix`: a write killed mid-copy leaves its
        temp file (a live one is seconds old; cleanup passes a cutoff hours back)."""
        removed = 0
        tmp_dir = self.root / _TMP_DIR
        if not tmp_dir.is_dir():
            return 0
        for tmp in tmp_dir.iterdir():
            try:
                if tmp.stat().st_mtime < cutoff_unix:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # finished (renamed) or removed by another cleanup meanwhile
            except OSError as exc:
                raise storage_error(str(tmp.name), exc) from exc
        return removed

    def _write_atomically(self, target: Path, write: Callable[[Path], object]) -> int:
        tmp_dir = self.root / _TMP_DIR
        tmp_dir.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}"
        try:
            write(tmp)
            size = tmp.stat().st_size
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return size

    def _walk(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, mtime) of every stored file whose key starts with `prefix`."""
        # Only the folder part of the prefix can be walked; the rest is a name filter.
        folder = prefix.rpartition("/")[0]
        start = self.path_for(folder) if folder else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix) and not name.startswith("."):
                    try:
                        yield key, path.stat().st_mtime
                    except FileNotFoundError:
                        continue  # deleted by someone else while we walked

    def _prune_empty_dirs(self, folder: Path) -> None:
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent
