"""modal.Dict semantics, each test citing the SDK line (modal 1.6.4 `modal/dict.py`) it models."""

from __future__ import annotations

import threading

import modal
import pytest

from tests.modal_emulator import ENTRY_TTL_S, KEYS_PAGE_SIZE, LEN_CAP, ModalEmulator
from tests.modal_emulator.sdk import bind


def _dict(name: str = "d") -> modal.Dict:
    return modal.Dict.from_name(name, create_if_missing=True)


def test_put_if_absent_returns_whether_it_wrote(emu: ModalEmulator) -> None:
    """dict.py:556-560: "Returns True if the key-value pair was added and False if it wasn't
    because the key already existed and `skip_if_exists` was set."""
    d = _dict()
    assert d.put("k", "first", skip_if_exists=True) is True
    assert d.put("k", "second", skip_if_exists=True) is False
    assert d.get("k") == "first"
    assert d.put("k", "third") is True  # unconditional: last writer wins
    assert d.get("k") == "third"


def test_put_if_absent_is_atomic_under_contention(emu: ModalEmulator) -> None:
    """dict.py:564: one `DictUpdateRequest(if_not_exists=...)`: the server decides atomically."""
    d = _dict()
    wins: list[bool] = []
    threads = [
        threading.Thread(target=lambda i=i: wins.append(d.put("c", i, skip_if_exists=True)))
        for i in range(32)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_there_is_no_other_conditional_write(emu: ModalEmulator) -> None:
    """dict.py:485-650 define no compare-and-set or increment; calls bind to the SDK's
    signatures, so an invented parameter or method fails as it would in production."""
    d = _dict()
    with pytest.raises(TypeError):
        d.put("k", "v", if_absent=True)  # type: ignore[call-arg]  # no such parameter
    with pytest.raises(TypeError):
        d.put("k", "v", skip_if_exists=True, expected="old")  # type: ignore[call-arg]  # no CAS
    assert not hasattr(d, "compare_and_set")
    assert not hasattr(d, "incr")


def test_a_call_shape_that_bound_once_does_not_let_other_shapes_through() -> None:
    """The SDK check remembers shapes that bound (a month makes millions of calls); a
    new shape is still checked: extra, missing or misnamed arguments still fail."""
    bind(modal.Dict, "put", ("k", "v"), {})
    bind(modal.Dict, "put", ("k", "v"), {"skip_if_exists": True})
    with pytest.raises(TypeError):
        bind(modal.Dict, "put", ("k", "v", True), {})  # skip_if_exists is keyword-only
    with pytest.raises(TypeError):
        bind(modal.Dict, "put", ("k",), {})  # no value
    with pytest.raises(TypeError):
        bind(modal.Dict, "put", ("k", "v"), {"skip_if_exist": True})  # misspelt


def test_get_default_contains_pop_semantics(emu: ModalEmulator) -> None:
    """dict.py:494-511 (`get` returns `default`, `contains`), 583-595 (`pop`: "If key is not
    found, return default if provided, otherwise raise KeyError")."""
    d = _dict()
    assert d.get("missing") is None
    assert d.get("missing", "dflt") == "dflt"
    assert d.contains("missing") is False
    d.put("k", {"a": 1})
    assert d.contains("k") and "k" in d
    assert d.pop("k") == {"a": 1}
    assert d.pop("k", None) is None
    with pytest.raises(KeyError, match="not in dict"):
        d.pop("k")
    with pytest.raises(KeyError):
        d["k"]


def test_values_are_copies_not_shared_objects(emu: ModalEmulator) -> None:
    """dict.py:48 `_serialize_dict`: values are serialized on write and read back as new
    objects; mutating what you read never changes what is stored."""
    d = _dict()
    value = {"n": 1}
    d.put("k", value)
    value["n"] = 2
    got = d.get("k")
    assert got == {"n": 1}
    got["n"] = 3
    assert d.get("k") == {"n": 1}


def test_update_len_clear(emu: ModalEmulator) -> None:
    """dict.py:536 `update(other=None, /, **kwargs)`, 513 `len`, 488 `clear`."""
    d = _dict()
    d.update({"a": 1, "b": 2}, c=3)
    assert d.len() == 3
    assert sorted(d.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert sorted(d.values()) == [1, 2, 3]
    d.clear()
    assert d.len() == 0


def test_entries_expire_after_seven_days_without_reads_or_writes(emu: ModalEmulator) -> None:
    """dict.py:265: "An individual Dict entry will expire after 7 days of inactivity (no reads
    or writes)." A read or write restarts the 7 days; a keys() scan does not count."""
    d = _dict()
    d.put("idle", "v")
    d.put("busy", "v")
    d.put("scanned", "v")
    for _ in range(3):
        emu.clock.advance(ENTRY_TTL_S - 60)
        assert d.get("busy") == "v"  # a read keeps it alive
        list(d.keys())  # a full scan is not activity
    assert d.get("idle") is None
    assert d.contains("scanned") is False
    assert d.get("busy") == "v"
    assert sorted(d.keys()) == ["busy"]


def test_a_write_refreshes_and_an_expired_key_can_be_created_again(emu: ModalEmulator) -> None:
    """dict.py:265 (writes are activity); an expired entry is gone, so put-if-absent wins."""
    d = _dict()
    d.put("k", "old")
    emu.clock.advance(ENTRY_TTL_S - 1)
    d.put("k", "new")
    emu.clock.advance(ENTRY_TTL_S - 1)
    assert d.get("k") == "new"
    emu.clock.advance(ENTRY_TTL_S)
    assert d.put("k", "again", skip_if_exists=True) is True


def test_keys_stream_everything_one_round_trip_per_page(emu: ModalEmulator) -> None:
    """dict.py:613-622: `keys()` is one `DictContents` stream over the whole Dict; any prefix
    filter runs on the client. Charged one RPC per `KEYS_PAGE_SIZE` (100, the SDK's own page
    size for listings, dict.py:181)."""
    d = _dict()
    d.update({f"job:{i}": i for i in range(250)})
    d.update({f"other:{i}": i for i in range(50)})
    with emu.ledger.step("scan"):
        wanted = [k for k in d.keys() if k.startswith("job:")]
    assert len(wanted) == 250
    assert emu.ledger.count(step="scan", op="keys:page") == 3  # 300 keys, 100 per page
    with emu.ledger.step("empty-scan"):
        assert list(_dict("empty").keys()) == []
    assert emu.ledger.count(step="empty-scan", op="keys:page") == 1


def test_keys_are_unordered(emu: ModalEmulator) -> None:
    """dict.py:616-617: "the return value is a simple iterator, and results are unordered"."""
    d = _dict()
    keys = [f"k{i:03d}" for i in range(200)]
    d.update({k: 1 for k in keys})
    streamed = list(d.keys())
    assert sorted(streamed) == keys
    assert streamed != keys  # not insertion order: no caller may rely on it


def test_len_is_capped_at_100000(emu: ModalEmulator) -> None:
    """dict.py:516: "This is an expensive operation and will return at most 100,000."""
    d = _dict()
    d.update({i: 0 for i in range(LEN_CAP + 5)})
    assert d.len() == LEN_CAP


def test_every_call_is_a_round_trip_and_a_new_handle_looks_up_first(emu: ModalEmulator) -> None:
    """dict.py:405 `_load`: a `from_name` handle is lazy and hydrates (one `DictGetOrCreate`)
    on first use; every method after that is one RPC (dict.py:494-600)."""
    with emu.ledger.step("s"):
        d = _dict()
        d.put("a", 1)
        d.get("a")
        d.contains("a")
        _dict().get("a")  # a fresh handle: lookup again
    ops = [r.op for r in emu.ledger.calls(step="s")]
    assert ops == ["from_name", "put", "get", "contains", "from_name", "get"]


def test_a_missing_dict_without_create_fails_on_first_use(emu: ModalEmulator) -> None:
    """dict.py:377-405: `from_name(create_if_missing=False)` is lazy; the lookup fails later."""
    from modal.exception import NotFoundError

    d = modal.Dict.from_name("nope")
    with pytest.raises(NotFoundError):
        d.get("k")


def test_keys_page_size_is_the_sdk_listing_page_size() -> None:
    """dict.py:181 `max_page_size = 100` (the figure the ledger charges per page)."""
    import inspect

    from modal import dict as sdk_dict

    assert "max_page_size = 100" in inspect.getsource(sdk_dict)
    assert KEYS_PAGE_SIZE == 100


def test_a_deleted_dict_is_gone_for_new_handles_and_fails_on_old_ones(emu: ModalEmulator) -> None:
    """`Dict.objects.delete` (dict.py `_DictManager.delete`): one round trip; the object
    is gone, so a new handle finds an empty dict and an old one fails on its next call."""
    from modal.exception import NotFoundError

    old = _dict()
    old.put("a", 1)
    with emu.ledger.step("s"):
        modal.Dict.objects.delete("d", allow_missing=True)
    assert [r.op for r in emu.ledger.calls(step="s")] == ["delete"]
    with pytest.raises(NotFoundError):
        old.get("a")
    with pytest.raises(NotFoundError):
        list(old.items())
    assert _dict().get("a") is None
    modal.Dict.objects.delete("never", allow_missing=True)
    with pytest.raises(NotFoundError):
        modal.Dict.objects.delete("never")
    with pytest.raises(TypeError):  # bound to the SDK's signature
        modal.Dict.objects.delete("d", missing_ok=True)  # type: ignore[call-arg]
