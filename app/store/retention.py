"""The retention index: every ended job under the hour it ended, for cleanup to purge.

One dict per hour of end (`keys.retention_hour_dict`), keyed by job id. Indexing a job
is one plain write: no sequence to search, no search hint to read and write back
(issue 12: three round trips became one), and writing the same entry twice (reconcile
redoing a release cut short) leaves one entry. Cleanup streams one hour's dict at a time
(`items()`: a round trip per 100 entries on Modal), so a run costs the hours now due,
never the history, and deletes each hour's dict once the hour is done.

The cursor (`retention/cursor`) is the first hour cleanup has not finished; hours before
it hold nothing. It is created by the first job ever indexed, before that job's entry
(an entry written before the cursor existed, under an hour the cursor then passed, would
never be purged), so each process checks it once per hour, not once per job.

Hours indexed before per-hour dicts are put-if-absent sequences `due:{hour}:{n}` in the
`retention` dict. Cleanup still walks them (two reads per hour once there are none); the
walk can go once every deploy has run this code for `job_retention_s`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from app.store.backends.base import KV, Backend, drop_kv, scan_items
from app.store.claims import sequence_end
from app.store.keys import (
    RETENTION_CURSOR_KEY,
    RETENTION_DICT,
    retention_bucket,
    retention_hour_dict,
    retention_prefix,
    sequence_hint_key,
    sequence_key,
)


@dataclass(frozen=True, slots=True)
class RetentionEntry:
    """One ended job in the index: its id and the keys it owns beyond its id."""

    job_id: str
    idem: str | None
    index: int | None
    #: Takes the entry out of the index (once its job is purged).
    remove: Callable[[], object]


class RetentionIndex:
    """The hour dicts and the cursor; safe to use from several threads."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._meta: KV = backend.kv(RETENTION_DICT)
        #: The hour for which this process last made sure the cursor exists.
        self._cursor_seen: int | None = None

    def add(self, job_id: str, idem: str | None, index: int | None, at: float) -> None:
        """Index a job that ended at `at` (idempotent)."""
        bucket = retention_bucket(at)
        if self._cursor_seen != bucket:
            self._meta.put_if_absent(RETENTION_CURSOR_KEY, str(bucket))
            self._cursor_seen = bucket
        entry = json.dumps({"job": job_id, "idem": idem, "index": index})
        self._hour(bucket).put(job_id, entry)

    def cursor(self) -> int | None:
        """The first hour cleanup has not finished; None if no job was ever indexed."""
        raw = self._meta.get(RETENTION_CURSOR_KEY)
        return None if raw is None else int(raw)

    def entries(self, bucket: int) -> Iterator[RetentionEntry]:
        """The jobs indexed under hour `bucket` (the old sequence first), lazily."""
        prefix = retention_prefix(bucket)
        for n in range(sequence_end(self._meta, prefix)):
            key = sequence_key(prefix, n)
            raw = self._meta.get(key)
            if raw is not None:  # else purged by an earlier run
                yield _entry(raw, partial(self._meta.pop, key))
        hour = self._hour(bucket)
        for key, raw in list(scan_items(hour)):
            yield _entry(raw, partial(hour.pop, key))

    def finish(self, bucket: int) -> None:
        """Hour `bucket` is purged and over: drop its dict and move the cursor past it."""
        self._meta.pop(sequence_hint_key(retention_prefix(bucket)))
        drop_kv(self._backend, retention_hour_dict(bucket))
        self._meta.put(RETENTION_CURSOR_KEY, str(bucket + 1))

    def _hour(self, bucket: int) -> KV:
        return self._backend.kv(retention_hour_dict(bucket))


def _entry(raw: str, remove: Callable[[], object]) -> RetentionEntry:
    data = json.loads(raw)
    index, idem = data.get("index"), data.get("idem")
    return RetentionEntry(
        job_id=str(data["job"]),
        idem=idem if isinstance(idem, str) else None,
        index=index if isinstance(index, int) else None,
        remove=remove,
    )
