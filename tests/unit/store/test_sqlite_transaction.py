"""`SqliteBackend.transaction` (under every `put_many`): writes grouped into one commit,
nested blocks join the outer one, an error rolls all of it back, and queue wake-ups wait
for the commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.store.backends.sqlite import SqliteBackend


@pytest.fixture
def pair(tmp_path: Path) -> tuple[SqliteBackend, SqliteBackend]:
    """The writer, and a second view of the same file (another process would see this)."""
    path = tmp_path / "state.sqlite3"
    return SqliteBackend(path), SqliteBackend(path)


def test_writes_show_to_others_only_when_the_outer_block_ends(
    pair: tuple[SqliteBackend, SqliteBackend],
) -> None:
    db, other = pair
    with db.transaction():
        db.kv("d").put("a", "1")
        with db.transaction():
            assert db.kv("d").put_if_absent("b", "2")
        assert other.kv("d").get("b") is None  # the inner block did not commit
        db.queue("q").put("m")
        assert other.queue("q").len() == 0
    assert other.kv("d").get("a") == "1"
    assert other.kv("d").get("b") == "2"
    assert other.queue("q").get() == "m"


def test_an_error_rolls_the_whole_block_back(pair: tuple[SqliteBackend, SqliteBackend]) -> None:
    db, other = pair
    with pytest.raises(RuntimeError), db.transaction():
        db.kv("d").put_many({"a": "1", "b": "2"})
        db.queue("q").put("m")
        raise RuntimeError("stage failed")
    assert other.kv("d").get("a") is None
    assert other.queue("q").len() == 0
    db.kv("d").put("c", "3")  # the connection is usable again, outside any block
    assert other.kv("d").get("c") == "3"


def test_wakeups_go_out_after_the_commit(
    pair: tuple[SqliteBackend, SqliteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = pair
    sent: list[tuple[str, int, bool]] = []
    notify = db.wakeups.notify

    def recording(queue: str, count: int) -> None:
        sent.append((queue, count, db.connection().in_transaction))
        notify(queue, count)

    monkeypatch.setattr(db.wakeups, "notify", recording)
    with db.transaction():
        db.queue("q").put("one")
        db.queue("q").put_many(["two", "three"])
        assert sent == []
    assert sent == [("q", 3, False)]
    db.queue("q").put("four")  # outside a block: at once, after its own commit
    assert sent[-1] == ("q", 1, False)
