"""The embedded local backend: queues and dicts in one SQLite file (WAL mode).

Safe for many processes and threads at once: every operation is a single SQL statement,
and SQLite serialises writers on the file lock, so `INSERT OR IGNORE` is an atomic
put-if-absent and `DELETE ... RETURNING` an atomic destructive get. Each process and
thread gets its own connection (connections must not cross a fork). WAL with
`synchronous=NORMAL` survives a crash of any process; only an OS crash or power loss can
drop the last few commits.

A batch of puts (`put_many` of a queue or a dict) is one statement in one transaction
(`transaction()`): one commit instead of one per key. A transaction takes the write lock
at once (`BEGIN IMMEDIATE`), so it never deadlocks on an upgrade; a queue's wake-ups go
out after its commit. Wider transactions (a stage's hand-off, a job's release) were
measured and not kept: with a process per stage, holding the lock across the Python
work between statements made the other writers wait (64-78 against 66-86 jobs/s,
interleaved, issue 13).

A put wakes a waiting consumer at once, in any process: beside the database each queue
has a named pipe (`<db>.wake/<hash of the queue name>`), a put writes a byte to it after
its commit, and a waiting `get` sleeps in `select` on it. The pipe carries no data that
matters (the queue rows are the truth), so a lost or extra byte only costs a poll: a
consumer still re-reads the table at least every `_WAKE_FALLBACK_S`, and where named
pipes are not available it polls as before.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
#: With a wake-up pipe a consumer still re-reads its queue this often (a missed byte).
_WAKE_FALLBACK_S = 0.5
#: Most bytes one wake-up reads (each put writes one per item).
_WAKE_READ_BYTES = 4096
#: Keys per SELECT of `read_many` (well under SQLite's bound on query parameters).
_READ_CHUNK = 500


def _close_all(fds: dict[str, tuple[int, int] | None]) -> None:
    for pair in fds.values():
        for fd in pair or ():
            try:
                os.close(fd)
            except OSError:
                pass


class _Wakeups:
    """Per-queue named pipes: `notify` after a commit, `wait` instead of a sleep.

    Each process opens a queue's pipe once, for reading and (so the reader never sees
    end-of-file when the last writer goes) for writing; the descriptors are not inherited
    and are opened again after a fork. Every waiter on a pipe wakes on any byte; one
    drains it, and all of them re-read the table.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fds: dict[str, tuple[int, int] | None] = {}
        # Backends are built freely (tests, CLI calls): their pipes close with them.
        weakref.finalize(self, _close_all, self._fds)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                _close_all(self._fds)
            self._fds.clear()

    def _path(self, queue: str) -> Path:
        return self.folder / hashlib.sha256(queue.encode()).hexdigest()[:24]

    def _open(self, queue: str) -> tuple[int, int] | None:
        """(read fd, write fd) of this queue's pipe in this process, or None (poll)."""
        with self._lock:
            if self._pid != os.getpid():
                self._fds.clear()  # a forked child: the parent's pipes are not ours
                self._pid = os.getpid()
            if queue in self._fds:
                return self._fds[queue]
            fds: tuple[int, int] | None = None
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                path = self._path(queue)
                try:
                    os.mkfifo(path, 0o600)
                except FileExistsError:
                    pass
                reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                fds = (reader, os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except (OSError, AttributeError):  # no FIFOs here (or no os.mkfifo): poll
                fds = None
            self._fds[queue] = fds
            return fds

    def notify(self, queue: str, count: int) -> None:
        """Wake consumers of `queue`: one byte per item put (best effort)."""
        fds = self._open(queue)
        if fds is None:
            return
        try:
            os.write(fds[1], b"\0" * max(1, min(count, _WAKE_READ_BYTES)))
        except OSError as exc:  # a full pipe already holds enough wake-ups
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise BackendError(f"sqlite wake-up: {exc}") from exc

    def wait(self, queue: str, timeout_s: float) -> int | None:
        """Sleep until a put on `queue` or `timeout_s`; the wake-up bytes taken, or None
        when this queue has no pipe (the caller then sleeps instead)."""
        fds = self._open(queue)
        if fds is None:
            return None
        poller = select.poll()  # not select(): that fails on descriptors past 1023
        poller.register(fds[0], select.POLLIN)
        if not poller.poll(max(0, round(timeout_s * 1000))):
            return 0
        try:
            return len(os.read(fds[0], _WAKE_READ_BYTES))
        except BlockingIOError:  # another waiter took the bytes; re-read the table anyway
            return 0


class SqliteBackend:
    """Named queues and dicts stored in one SQLite database file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.wakeups = _Wakeups(self.path.with_name(self.path.name + ".wake"))
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

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run this thread's statements inside as one transaction: committed when the block
        ends, rolled back if it raises (a `put_many`'s one commit)."""
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise BackendError(f"sqlite: {exc}") from exc
        try:
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise BackendError(f"sqlite: {exc}") from exc
            raise

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

    def drop_kv(self, name: str) -> None:
        """Delete every row of the dict called `name` (`base.drop_kv`)."""
        self.execute("DELETE FROM kv WHERE name = ?", (name,))

    def close(self) -> None:
        self.wakeups.close()
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
        with self._db.transaction():
            self._db.connection().executemany(
                "INSERT INTO queue (name, value) VALUES (?, ?)", [(self.name, i) for i in items]
            )
        self._db.wakeups.notify(self.name, len(items))  # after the commit: rows are there

    def get(self, timeout_s: float | None = 0.0) -> str | None:
        got = self.get_many(1, timeout_s)
        return got[0] if got else None

    def get_many(self, max_items: int, timeout_s: float | None = 0.0) -> list[str]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pause = _POLL_MIN_S
        woken = 0
        while True:
            got = self._take(max_items)
            if got:
                if woken > len(got) and len(got) == max_items:
                    # The queue may hold more than we took: pass the spare wake-ups on,
                    # so a consumer that waits now is not left asleep beside them.
                    self._db.wakeups.notify(self.name, woken - len(got))
                return got
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            fallback = _WAKE_FALLBACK_S if remaining is None else min(_WAKE_FALLBACK_S, remaining)
            taken = self._db.wakeups.wait(self.name, fallback)
            if taken is not None:
                woken = taken
                continue
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

    def put_many(self, items: Mapping[str, str]) -> None:
        """Several keys in one statement and one transaction (see `base.put_all`)."""
        with self._db.transaction():
            self._db.connection().executemany(
                "INSERT INTO kv (name, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (name, key) DO UPDATE SET value = excluded.value",
                [(self.name, key, value) for key, value in items.items()],
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

    def read_many(self, keys: Sequence[str]) -> list[str | None]:
        """Several keys in one SELECT per `_READ_CHUNK` (a page of jobs: one query)."""
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _READ_CHUNK):
            chunk = unique[start : start + _READ_CHUNK]
            marks = ",".join("?" * len(chunk))  # placeholders only: the keys are bound
            rows = self._db.execute(
                f"SELECT key, value FROM kv WHERE name = ? AND key IN ({marks})",
                (self.name, *chunk),
            ).fetchall()
            found.update((str(k), str(v)) for k, v in rows)
        return [found.get(key) for key in keys]

    def keys(self, prefix: str = "") -> Iterator[str]:
        # A range scan on the primary key, not a LIKE: prefixes may contain % or _.
        rows = self._db.execute(
            "SELECT key FROM kv WHERE name = ? AND key >= ? AND key < ? ORDER BY key",
            (self.name, prefix, prefix + "\U0010ffff"),
        ).fetchall()
        return iter([str(r[0]) for r in rows])
