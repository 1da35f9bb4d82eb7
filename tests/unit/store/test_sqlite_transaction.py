"""`SqliteBackend.transaction` (under every `put_many`): writes grouped into one commit, an
error rolls all of it back, and a queue's wake-ups wait for the commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.store.backends.sqlite import SqliteBackend


@pytest.fixture
def pair(tmp_path: Path) -> tuple[SqliteBackend, SqliteBackend]:
    """The writer, and a second view of the same file (another process would see this)."""
    path = tmp_path / "state.sqlite3"
    return SqliteBackend(path), SqliteBackend(path)


def test_writes_show_to_others_only_when_the_block_ends(
    pair: tuple[SqliteBackend, SqliteBackend],
) -> None:
    db, other = pair
    with db.transaction():
        db.kv("d").put("a", "1")
        assert db.kv("d").put_if_absent("b", "2")
        assert other.kv("d").get("a") is None
        assert other.kv("d").get("b") is None
    assert other.kv("d").get("a") == "1"
    assert other.kv("d").get("b") == "2"


def test_an_error_rolls_the_whole_block_back(pair: tuple[SqliteBackend, SqliteBackend]) -> None:
    db, other = pair
    with pytest.raises(RuntimeError), db.transaction():
        db.kv("d").put("a", "1")
        db.kv("d").put("b", "2")
        raise RuntimeError("stage failed")
    assert other.kv("d").get("a") is None
    assert other.kv("d").get("b") is None
    db.kv("d").put("c", "3")  # the connection is usable again, outside any block
    assert other.kv("d").get("c") == "3"


def test_a_dicts_put_many_is_one_commit(pair: tuple[SqliteBackend, SqliteBackend]) -> None:
    db, other = pair
    db.kv("d").put_many({"a": "1", "b": "2"})
    assert [other.kv("d").get(k) for k in ("a", "b")] == ["1", "2"]


def test_wakeups_go_out_after_the_commit(
    pair: tuple[SqliteBackend, SqliteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, other = pair
    sent: list[tuple[str, int, bool, int]] = []
    notify = db.wakeups.notify

    def recording(queue: str, count: int) -> None:
        # In a transaction still, or already committed (the rows visible to others)?
        sent.append((queue, count, db.connection().in_transaction, other.queue(queue).len()))
        notify(queue, count)

    monkeypatch.setattr(db.wakeups, "notify", recording)
    db.queue("q").put_many(["one", "two"])
    assert sent == [("q", 2, False, 2)]
    db.queue("q").put("three")
    assert sent[-1] == ("q", 1, False, 3)
