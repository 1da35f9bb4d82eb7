"""One contract, every backend that can run here: memory, SQLite on file, Modal adapter.

The Modal adapter runs over `tests.modal_fake`, which binds every call to the installed
SDK's real signatures; nothing here pretends to reach Modal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.errors import QueueItemTooLarge
from app.store.backends.base import MAX_QUEUE_ITEM_BYTES, Backend, drop_kv, get_all
from app.store.backends.memory import MemoryBackend
from app.store.backends.modal import ModalBackend
from app.store.backends.sqlite import SqliteBackend
from tests.modal_fake import FakeModal

BACKENDS = ["memory", "sqlite", "modal"]


def make_backend(kind: str, tmp_path: Path) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        return SqliteBackend(tmp_path / "nested" / "state.sqlite3")
    fake = FakeModal()
    return ModalBackend(
        "test",
        "dev",
        queue_factory=fake.queue_from_name,
        dict_factory=fake.dict_from_name,
        dict_deleter=fake.dict_delete,
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = make_backend(request.param, tmp_path)
    yield b
    b.close()


# ---- queues -------------------------------------------------------------------------


def test_queue_is_fifo_and_get_is_destructive(backend: Backend) -> None:
    q = backend.queue("q")
    q.put("a")
    q.put_many(["b", "c"])
    assert q.len() == 3
    assert q.get() == "a"
    assert q.get_many(10) == ["b", "c"]
    assert q.len() == 0
    assert q.get() is None


def test_queues_are_independent_by_name(backend: Backend) -> None:
    backend.queue("one").put("x")
    assert backend.queue("two").get() is None
    assert backend.queue("one").get() == "x"


def test_get_many_takes_at_most_n(backend: Backend) -> None:
    q = backend.queue("q")
    q.put_many([str(i) for i in range(5)])
    assert q.get_many(2) == ["0", "1"]
    assert q.get_many(2) == ["2", "3"]
    assert q.len() == 1


def test_get_waits_up_to_timeout_then_returns_none(backend: Backend) -> None:
    q = backend.queue("q")
    started = time.monotonic()
    assert q.get(timeout_s=0.3) is None
    assert 0.25 <= time.monotonic() - started < 2.0


def test_blocking_get_sees_an_item_put_while_waiting(backend: Backend) -> None:
    q = backend.queue("q")
    threading.Timer(0.1, lambda: q.put("late")).start()
    assert q.get(timeout_s=5) == "late"


def test_items_over_one_mib_are_refused_like_modal(backend: Backend) -> None:
    q = backend.queue("q")
    with pytest.raises(QueueItemTooLarge):
        q.put("x" * (MAX_QUEUE_ITEM_BYTES + 1))
    with pytest.raises(QueueItemTooLarge):
        q.put_many(["ok", "x" * (MAX_QUEUE_ITEM_BYTES + 1)])
    assert q.len() == 0  # nothing of a refused batch was written


def test_unicode_round_trips(backend: Backend) -> None:
    backend.queue("q").put("jöb ✓")
    assert backend.queue("q").get() == "jöb ✓"
    backend.kv("d").put("ké", "vâl ✓")
    assert backend.kv("d").get("ké") == "vâl ✓"


# ---- dicts --------------------------------------------------------------------------


def test_put_get_overwrite(backend: Backend) -> None:
    d = backend.kv("d")
    assert d.get("k") is None
    d.put("k", "1")
    d.put("k", "2")
    assert d.get("k") == "2"
    assert d.contains("k")
    assert not d.contains("other")


def test_put_if_absent_writes_only_once(backend: Backend) -> None:
    d = backend.kv("d")
    assert d.put_if_absent("k", "first") is True
    assert d.put_if_absent("k", "second") is False
    assert d.get("k") == "first"


def test_pop_returns_value_once(backend: Backend) -> None:
    d = backend.kv("d")
    d.put("k", "v")
    assert d.pop("k") == "v"
    assert d.pop("k") is None
    assert d.put_if_absent("k", "again") is True


def test_keys_by_prefix_treats_wildcards_literally(backend: Backend) -> None:
    d = backend.kv("d")
    for key in ["job:1", "job:2", "jobx:3", "job%:4", "other"]:
        d.put(key, "v")
    assert sorted(d.keys("job:")) == ["job:1", "job:2"]
    assert sorted(d.keys("job%")) == ["job%:4"]
    assert len(list(d.keys())) == 5


def test_get_all_reads_several_keys_in_order(backend: Backend) -> None:
    d = backend.kv("d")
    backend.kv("other").put("b", "elsewhere")
    for n in range(600):  # more than one SQLite chunk
        d.put(f"k{n}", str(n))
    d.put("b", "2")
    wanted = ["b", "missing", "k0", "b", *(f"k{n}" for n in range(599, -1, -1))]
    assert get_all(d, wanted) == ["2", None, "0", "2", *(str(n) for n in range(599, -1, -1))]
    assert get_all(d, []) == []


def test_dicts_are_independent_by_name(backend: Backend) -> None:
    backend.kv("a").put("k", "1")
    assert backend.kv("b").get("k") is None


def test_put_if_absent_is_atomic_across_threads(backend: Backend) -> None:
    d = backend.kv("d")
    wins: list[bool] = []
    lock = threading.Lock()

    def contend(i: int) -> None:
        won = d.put_if_absent("contested", str(i))
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_concurrent_consumers_each_item_once(backend: Backend) -> None:
    q = backend.queue("q")
    q.put_many([str(i) for i in range(200)])
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        while batch := q.get_many(7):
            with lock:
                seen.extend(batch)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen, key=int) == [str(i) for i in range(200)]


# ---- backend-specific facts -----------------------------------------------------------


def test_sqlite_is_durable_across_reopen(tmp_path: Path) -> None:
    first = SqliteBackend(tmp_path / "s.db")
    first.queue("q").put("kept")
    first.kv("d").put("k", "v")
    first.close()
    again = SqliteBackend(tmp_path / "s.db")
    assert again.queue("q").get() == "kept"
    assert again.kv("d").get("k") == "v"


def test_modal_adapter_names_objects_per_app_and_environment() -> None:
    fake = FakeModal()
    backend = ModalBackend(
        "comfyui-saas",
        "prod",
        queue_factory=fake.queue_from_name,
        dict_factory=fake.dict_from_name,
    )
    backend.queue("render").put("x")
    backend.kv("jobs").put("k", "v")
    assert fake.lookups == [
        ("comfyui-saas-render", {"environment_name": "prod", "create_if_missing": True}),
        ("comfyui-saas-jobs", {"environment_name": "prod", "create_if_missing": True}),
    ]


def test_modal_fake_rejects_a_parameter_modal_does_not_have() -> None:
    # Given the enforcing fake, When a call uses a parameter the SDK lacks, Then it fails:
    # this is what makes the contract test catch SDK renames.
    fake = FakeModal()
    q = fake.queue_from_name("q", create_if_missing=True)
    with pytest.raises(TypeError):
        q.put("x", visibility_timeout=5)
    d = fake.dict_from_name("d")
    with pytest.raises(TypeError):
        d.put("k", "v", if_absent=True)
    with pytest.raises(AttributeError):
        d.compare_and_set("k", "a", "b")


def test_modal_adapter_wraps_sdk_errors() -> None:
    from app.core.errors import BackendError

    def broken(name: str, **kwargs: object) -> object:
        class Handle:
            def get(self, key: str) -> str:
                raise ConnectionError("no token")

        return Handle()

    backend = ModalBackend("x", queue_factory=broken, dict_factory=broken)
    with pytest.raises(BackendError, match="ConnectionError"):
        backend.kv("d").get("k")


def test_a_dropped_dict_is_gone_and_the_others_stay(backend: Backend) -> None:
    backend.kv("hour-1").put("a", "1")
    backend.kv("hour-2").put("b", "2")
    drop_kv(backend, "hour-1")
    drop_kv(backend, "never-made")  # a missing dict is fine
    assert list(backend.kv("hour-1").keys()) == []
    assert backend.kv("hour-1").get("a") is None
    assert backend.kv("hour-2").get("b") == "2"
    backend.kv("hour-1").put("c", "3")  # the name is usable again, from empty
    assert list(backend.kv("hour-1").keys()) == ["c"]
