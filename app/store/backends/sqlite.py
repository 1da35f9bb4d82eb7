"""The embedded local backend: queues and dicts in one SQLite file (WAL mode).

Safe for many processes and threads at once: every operation is a single SQL statement,
and SQLite serialises writers on the file lock, so `INSERT OR IGNORE` is an atomic
put-if-absent and `DELETE ... RETURNING` an atomic destructive get. Each process and
thread gets its own connection (connections must not cross a fork). WAL with
`synchronous=NORMAL` survives a crash of any process; only an OS crash or power loss can
drop the last few commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from app.core.errors import BackendError
from app.store.backends.base import check_queue_item

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    name  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    name  TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_by_name ON queue (name, id);
"""

#: Polling an empty queue starts fast (a message put just now is picked up within
#: milliseconds) and backs off so idle workers cost almost nothing.
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.1
_BUSY_TIMEOUT_MS = 30_000


class SqliteBackend:
    """Named queues and dicts stored in one SQLite database file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._connect()
        try:
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def connection(self) -> sqlite3.Connection:
        """This thread's connection in this process (opened again after a fork)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def execute(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        """Run one statement, translating SQLite failures into `BackendError`."""
        try:
            return self.connection().execute(sql, params)
        except sqlite3.Error as exc:
            raise BackendError(f"sqlite: {exc}") from exc

    def queue(self, name: str) -> SqliteQueue:
        return SqliteQueue(self, name)

    def kv(self, name: str) -> SqliteKV:
        return SqliteKV(self, name)

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local = threading.local()


class SqliteQueue:
    """A FIFO stored as rows ordered by an autoincrement id."""

    def __init__(self, db: SqliteBackend, name: str) -> None:
        self._db = db
        self.name = name

    def put(self, item: str) -> None:
        self.put_many([item])

    def put_many(self, items: Sequence[str]) -> None:
        for item in items:
            check_queue_item(item)
        conn = self._db.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO queue (name, value) VALUES (?, ?)", [(self.name, i) for i in items]
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise BackendError(f"sqlite: {exc}") from exc

    def get(self, timeout_s: float | None = 0.0) -> str | None:
        got = self.get_many(1, timeout_s)
        return got[0] if got else None

    def get_many(self, max_items: int, timeout_s: float | None = 0.0) -> list[str]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = _POLL_MIN_S
        while True:
            got = self._take(max_items)
            if got:
                return got
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)

    def _take(self, max_items: int) -> list[str]:
        rows = self._db.execute(
            "DELETE FROM queue WHERE id IN "
            "(SELECT id FROM queue WHERE name = ? ORDER BY id LIMIT ?) RETURNING id, value",
            (self.name, max_items),
        ).fetchall()
        # RETURNING gives rows in no promised order; FIFO is by id.
        return [value for _, value in sorted(rows)]

    def len(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM queue WHERE name = ?", (self.name,)).fetchone()
        return int(row[0])


class SqliteKV:
    """A dict stored as (name, key) -> value rows."""

    def __init__(self, db: SqliteBackend, name: str) -> None:
        self._db = db
        self.name = name

    def get(self, key: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM kv WHERE name = ? AND key = ?", (self.name, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO kv (name, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
            (self.name, key, value),
        )

    def put_if_absent(self, key: str, value: str) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO kv (name, key, value) VALUES (?, ?, ?)", (self.name, key, value)
        )
        return cur.rowcount == 1

    def pop(self, key: str) -> str | None:
        row = self._db.execute(
            "DELETE FROM kv WHERE name = ? AND key = ? RETURNING value", (self.name, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def contains(self, key: str) -> bool:
        return self.get(key) is not None

    def keys(self, prefix: str = "") -> Iterator[str]:
        # A range scan on the primary key, not a LIKE: prefixes may contain % or _.
        rows = self._db.execute(
            "SELECT key FROM kv WHERE name = ? AND key >= ? AND key < ? ORDER BY key",
            (self.name, prefix, prefix + "\U0010ffff"),
        ).fetchall()
        return iter([str(r[0]) for r in rows])
