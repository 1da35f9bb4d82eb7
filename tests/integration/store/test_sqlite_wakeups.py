"""A put on the SQLite backend wakes a consumer waiting in another connection at once.

The fallback poll is pushed out to an hour, so a consumer that was not woken by the
put's notification would wait out the test's timeout instead of passing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from app.store.backends import sqlite


@pytest.fixture
def no_fallback_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite, "_WAKE_FALLBACK_S", 3600.0)
    monkeypatch.setattr(sqlite, "_POLL_MIN_S", 3600.0)


def consume(queue: sqlite.SqliteQueue, out: list[str], max_items: int = 1) -> threading.Thread:
    def run() -> None:
        out.extend(queue.get_many(max_items, timeout_s=None))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_fallback_poll")
def test_a_put_from_another_backend_wakes_a_waiting_get(tmp_path: Path) -> None:
    # Given a consumer waiting on an empty queue (its own backend: another process's view)
    consumer = sqlite.SqliteBackend(tmp_path / "state.db")
    producer = sqlite.SqliteBackend(tmp_path / "state.db")
    got: list[str] = []
    waiting = consume(consumer.queue("q"), got)
    # When another backend puts a message
    producer.queue("q").put("hello")
    # Then the consumer has it without waiting for a poll
    waiting.join(30)
    assert got == ["hello"]
    consumer.close()
    producer.close()


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("no_fallback_poll")
def test_every_waiting_consumer_of_a_batch_is_woken(tmp_path: Path) -> None:
    # Given three consumers waiting for one message each
    backend = sqlite.SqliteBackend(tmp_path / "state.db")
    got: list[str] = []
    threads = [
        consume(sqlite.SqliteBackend(tmp_path / "state.db").queue("q"), got) for _ in range(3)
    ]
    # When three messages arrive in one put
    backend.queue("q").put_many(["a", "b", "c"])
    # Then each consumer gets one (spare wake-ups are passed on, none is left asleep)
    for thread in threads:
        thread.join(30)
    assert sorted(got) == ["a", "b", "c"]


@pytest.mark.timeout(60)
def test_without_named_pipes_the_queue_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a filesystem where named pipes cannot be made
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("no fifos here")

    monkeypatch.setattr(os, "mkfifo", refuse)
    backend = sqlite.SqliteBackend(tmp_path / "state.db")
    got: list[str] = []
    waiting = consume(backend.queue("q"), got)
    # When a message is put, then Then the polling consumer still finds it
    backend.queue("q").put("polled")
    waiting.join(30)
    assert got == ["polled"]
