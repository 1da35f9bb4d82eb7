"""An in-memory `ObjectStore` for unit tests, shipped and tested like the real stores."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from app.adapters.storage.base import require_safe_key
from app.core.errors import ObjectNotFound, UploadFailed


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object held by `MemoryStore`."""

    data: bytes
    content_type: str
    modified_at: float


class MemoryStore:
    """A dict of key to `StoredObject`; `objects` is public for assertions."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.objects: dict[str, StoredObject] = {}
        self._clock = clock

    def put_file(self, key: str, path: Path, content_type: str) -> int:
        """Store the file's bytes under `key`; return their count."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UploadFailed(f"cannot read the output file for {key}") from exc
        return self.put_bytes(key, data, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> int:
        """Store `data` under `key`; return its size."""
        require_safe_key(key)
        self.objects[key] = StoredObject(bytes(data), content_type, self._clock())
        return len(data)

    def url(self, key: str, *, filename: str, content_type: str, expires_s: int) -> str:
        """A `memory://` link naming the key, the headers and the expiry (not signed)."""
        require_safe_key(key)
        expires = int(self._clock()) + expires_s
        query = urlencode({"expires": expires, "filename": filename, "content_type": content_type})
        return f"memory://{quote(key, safe='/')}?{query}"

    def exists(self, key: str) -> bool:
        """Whether `key` is held."""
        require_safe_key(key)
        return key in self.objects

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix` (not empty); return the count."""
        if not prefix:
            raise ValueError("refusing to delete with an empty prefix")
        return self.delete_keys([key for key in self.objects if key.startswith(prefix)])

    def delete_keys(self, keys: list[str]) -> int:
        """Delete the given keys (missing ones are skipped); return how many were asked."""
        for key in keys:
            require_safe_key(key)
        for key in keys:
            self.objects.pop(key, None)
        return len(keys)

    def list_older_than(self, prefix: str, cutoff_unix: float) -> list[str]:
        """Keys under `prefix` written before `cutoff_unix`."""
        return sorted(
            key
            for key, obj in self.objects.items()
            if key.startswith(prefix) and obj.modified_at < cutoff_unix
        )

    def remove_partial(self, cutoff_unix: float) -> int:
        """Nothing to remove: a put here is whole or absent."""
        return 0

    def size_of(self, key: str) -> int | None:
        """The held object's size, None if there is none."""
        require_safe_key(key)
        held = self.objects.get(key)
        return None if held is None else len(held.data)

    def get_file(self, key: str, dest: Path) -> int:
        """Write the held object to `dest`; `ObjectNotFound` if there is none."""
        require_safe_key(key)
        held = self.objects.get(key)
        if held is None:
            raise ObjectNotFound()
        dest.write_bytes(held.data)
        return len(held.data)
