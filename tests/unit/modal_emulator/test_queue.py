"""modal.Queue semantics, each test citing the SDK line (modal 1.6.4 `modal/queue.py`)."""

from __future__ import annotations

import queue as stdlib_queue
import threading
import time

import modal
import pytest
from modal.exception import InvalidError, RequestSizeError

from tests.modal_emulator import (
    DEFAULT_PARTITION_TTL_S,
    MAX_ITEM_BYTES,
    MAX_PARTITION_ITEMS,
    EmulatedHang,
    ModalEmulator,
)


def _queue(name: str = "q") -> modal.Queue:
    return modal.Queue.from_name(name, create_if_missing=True)


def test_get_is_destructive_and_fifo(emu: ModalEmulator) -> None:
    """queue.py:558 "Remove and return the next object in the queue": no ack, no redelivery."""
    q = _queue()
    q.put_many(["a", "b", "c"])
    assert q.get() == "a"
    assert q.get_many(5) == ["b", "c"]
    assert q.len() == 0
    assert q.get(block=False) is None


def test_partitions_are_independent_fifos(emu: ModalEmulator) -> None:
    """queue.py:272-274: "Across any two partitions, puts and gets are completely independent"."""
    q = _queue()
    q.put("default")
    q.put("p1", partition="one")
    q.put("p2", partition="two")
    assert q.len(partition="one") == 1
    assert q.len(total=True) == 3
    assert q.get(partition="two") == "p2"
    assert q.get(block=False, partition="two") is None
    assert q.get() == "default"
    with pytest.raises(InvalidError):
        q.len(partition="one", total=True)


def test_partition_keys_are_one_to_64_bytes(emu: ModalEmulator) -> None:
    """queue.py:297 "Partition keys must be non-empty and must not exceed 64 bytes"."""
    q = _queue()
    with pytest.raises(InvalidError):
        q.put("x", partition="")
    with pytest.raises(InvalidError):
        q.put("x", partition="k" * 65)
    q.put("x", partition="k" * 64)


def test_blocking_get_with_timeout_raises_empty(emu: ModalEmulator) -> None:
    """queue.py:560-561: "Raises a native `queue.Empty` exception if the `timeout` is reached";
    queue.py:565: non-blocking `get` "returns `None` immediately"."""
    q = _queue()
    emu.clock.real_wait_scale = 0.0  # simulated timeouts are instant
    before = emu.clock.now()
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=30)
    assert emu.clock.now() >= before + 30
    with pytest.raises(stdlib_queue.Empty):
        q.get_many(3, timeout=1)
    assert q.get_many(3, block=False) == []


def test_blocking_get_wakes_for_a_put(emu: ModalEmulator) -> None:
    """queue.py:592-593: blocking `get_many` "waits until at least one object is present"."""
    q = _queue()
    threading.Timer(0.05, lambda: _queue().put("late")).start()
    assert q.get(timeout=5) == "late"


def test_item_over_one_mib_is_refused(emu: ModalEmulator) -> None:
    """queue.py:294-295: "Each item can be up to 1 MiB"; the SDK raises RequestSizeError on the
    server's 413 (queue.py:700-703). Nothing of a refused batch is written."""
    q = _queue()
    with pytest.raises(RequestSizeError):
        q.put(b"x" * (MAX_ITEM_BYTES + 1))
    with pytest.raises(RequestSizeError):
        q.put_many(["ok", b"x" * (MAX_ITEM_BYTES + 1)])
    assert q.len() == 0


def test_partition_holds_5000_items_then_put_with_timeout_raises_full(emu: ModalEmulator) -> None:
    """queue.py:294 "each with up to 5,000 items"; queue.py:626-630: a blocking put "will retry
    indefinitely or until `timeout` ... Raises the stdlib's `queue.Full`"; with `block=False`
    it "raises `queue.Full` immediately"."""
    emu.clock.real_wait_scale = 0.0
    q = _queue()
    q.put_many(list(range(MAX_PARTITION_ITEMS)))
    with pytest.raises(stdlib_queue.Full):
        q.put("one more", timeout=5)
    with pytest.raises(stdlib_queue.Full):
        q.put("one more", block=False)
    q.put("other partition is fine", partition="p")
    assert emu.ledger.hangs == []
    q.get()
    q.put("fits again", timeout=5)


def test_partition_holds_64_mib(emu: ModalEmulator) -> None:
    """queue.py:295: "each partition can be up to 64 MiB in total size"."""
    emu.clock.real_wait_scale = 0.0
    q = _queue()
    chunk = b"x" * (MAX_ITEM_BYTES - 100)  # just under 1 MiB once pickled
    q.put_many([chunk] * 64)
    with pytest.raises(stdlib_queue.Full):
        q.put(chunk, timeout=1)
    assert q.len() == 64  # far below 5,000 items: the byte limit bit first


def test_put_without_timeout_on_a_full_partition_is_a_hang(emu: ModalEmulator) -> None:
    """queue.py:688-694: the blocking put retries RESOURCE_EXHAUSTED with `max_retries=None`
    and `total_timeout=None`: forever. The emulator records it and raises EmulatedHang
    (a BaseException, so `except Exception` cannot hide it)."""
    q = _queue()
    q.put_many(list(range(MAX_PARTITION_ITEMS)))
    for _ in range(2):
        with pytest.raises(EmulatedHang):
            try:
                q.put("stuck")
            except Exception:  # noqa: BLE001 - proves app-level handlers cannot swallow it
                pytest.fail("a hang must not be an Exception")
    assert len(emu.ledger.hangs) == 2
    assert not issubclass(EmulatedHang, Exception)


def test_a_blocked_put_proceeds_when_a_consumer_makes_room(emu: ModalEmulator) -> None:
    """queue.py:625: the put retries until the partition has room: not a hang if room comes."""
    emu.hang_bound_s = 2.0
    q = _queue()
    q.put_many(list(range(MAX_PARTITION_ITEMS)))
    emu.queues[(None, "q")].hang_bound_s = 2.0
    threading.Timer(0.05, lambda: _queue().get()).start()
    q.put("after room")
    assert emu.ledger.hangs == []
    assert q.len() == MAX_PARTITION_ITEMS


def test_partition_is_cleared_24h_after_its_last_put(emu: ModalEmulator) -> None:
    """queue.py:282-284: "each partition is cleared 24 hours after the last `put` operation. A
    lower TTL can be specified by the `partition_ttl` argument"; gets do not extend it."""
    q = _queue()
    q.put_many(["a", "b"])
    emu.clock.advance(DEFAULT_PARTITION_TTL_S - 10)
    assert q.get() == "a"
    emu.clock.advance(20)
    assert q.len() == 0
    assert q.get(block=False) is None
    q.put("short", partition="p", partition_ttl=60)
    emu.clock.advance(61)
    assert q.len(partition="p") == 0


def test_a_put_restarts_the_partition_ttl(emu: ModalEmulator) -> None:
    """queue.py:282 ("after the last `put`"): a later put keeps earlier items alive."""
    q = _queue()
    q.put("a")
    emu.clock.advance(DEFAULT_PARTITION_TTL_S - 10)
    q.put("b")
    emu.clock.advance(DEFAULT_PARTITION_TTL_S - 10)
    assert q.get_many(5) == ["a", "b"]


def test_clear_and_iterate(emu: ModalEmulator) -> None:
    """queue.py:529 `clear(partition=None, all=False)`, 754 `iterate` "without mutation"."""
    q = _queue()
    q.put_many([1, 2])
    q.put(3, partition="p")
    assert list(q.iterate()) == [1, 2]
    assert q.len() == 2
    q.clear()
    assert q.len() == 0 and q.len(partition="p") == 1
    q.clear(all=True)
    assert q.len(total=True) == 0
    with pytest.raises(InvalidError):
        q.clear(partition="p", all=True)


def test_signatures_are_the_sdks(emu: ModalEmulator) -> None:
    """queue.py:554-668: no visibility timeout, ack or `max_items`: binding fails like the SDK."""
    q = _queue()
    with pytest.raises(TypeError):
        q.put("x", visibility_timeout=5)  # type: ignore[call-arg]  # no such parameter
    with pytest.raises(TypeError):
        q.get_many(max_items=3)  # type: ignore[call-arg]  # no such parameter
    assert not hasattr(q, "ack")


def test_long_blocking_get_costs_a_request_per_50_seconds(emu: ModalEmulator) -> None:
    """queue.py:504: "request_timeout = 50.0": a blocking get re-issues QueueGet every 50 s."""
    emu.clock.real_wait_scale = 0.0
    q = _queue()
    with emu.ledger.step("wait"), pytest.raises(stdlib_queue.Empty):
        q.get(timeout=175)
    assert emu.ledger.count(step="wait", op="get") == 1
    assert emu.ledger.count(step="wait", op="get:poll") == 3


def test_real_time_get_timeout_is_kept(emu: ModalEmulator) -> None:
    """queue.py:499-526: with the default scale a timeout waits in real time, as threads expect."""
    q = _queue()
    started = time.monotonic()
    with pytest.raises(stdlib_queue.Empty):
        q.get(timeout=0.2)
    assert time.monotonic() - started >= 0.19
