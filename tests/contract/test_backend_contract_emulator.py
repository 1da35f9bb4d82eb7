"""The backend contract suite, run by the production Modal adapter over the Modal emulator.

`tests/contract/test_backend_contract.py` runs the adapter over the signature-only fake;
here the same tests (imported, not copied) run over `tests.modal_emulator`, which also
enforces Modal's *behaviour*: serialized values, the lookup round trip per handle, queue
limits, expiry on the injected clock. The adapter is built with its default factories
(`modal.Queue.from_name` / `modal.Dict.from_name`), which `install()` routes to the emulator.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import modal
import pytest

from app.store.backends.base import Backend
from app.store.backends.modal import ModalBackend
from tests.contract import test_backend_contract as contract
from tests.modal_emulator import ENTRY_TTL_S, ModalEmulator

#: Every contract test that takes the `backend` fixture, under its own name.
CONTRACT_TESTS = {
    name: fn
    for name, fn in vars(contract).items()
    if name.startswith("test_") and "backend" in inspect.signature(fn).parameters
}
globals().update(CONTRACT_TESTS)


@pytest.fixture
def emulator() -> Iterator[ModalEmulator]:
    emu = ModalEmulator()
    with emu.install():
        yield emu
    emu.close()


@pytest.fixture
def backend(emulator: ModalEmulator) -> Iterator[Backend]:
    b = ModalBackend("test", "dev")  # default factories: the patched SDK
    yield b
    b.close()


def test_the_whole_contract_is_collected_here() -> None:
    assert len(CONTRACT_TESTS) >= 10
    assert "test_put_if_absent_is_atomic_across_threads" in CONTRACT_TESTS


def test_adapter_objects_are_the_emulators(emulator: ModalEmulator) -> None:
    backend = ModalBackend("comfyui-saas", "prod")
    backend.kv("jobs").put("k", "v")
    backend.queue("render").put("x")
    assert set(emulator.dicts) == {("prod", "comfyui-saas-jobs")}
    assert set(emulator.queues) == {("prod", "comfyui-saas-render")}
    assert isinstance(modal.Dict.from_name("x"), object)


def test_adapter_each_call_is_a_round_trip_plus_one_lookup_per_name(
    emulator: ModalEmulator,
) -> None:
    """One handle per dict or queue name per backend (issue 12): one lookup, then calls."""
    backend = ModalBackend("t", "dev")
    with emulator.ledger.step("s"):
        backend.kv("d").put("a", "1")
        backend.kv("d").get("a")
        backend.queue("q").put("x")
        backend.queue("q").len()
    assert [r.op for r in emulator.ledger.calls(step="s")] == [
        "from_name",
        "put",
        "get",
        "from_name",
        "put",
        "len",
    ]


def test_adapter_keys_scan_costs_a_page_per_100_keys_of_the_whole_dict(
    emulator: ModalEmulator,
) -> None:
    """`ModalKV.keys(prefix)` streams everything and filters client-side (issue 9, item 5)."""
    kv = ModalBackend("t", "dev").kv("d")
    for i in range(450):
        kv.put(f"{'job' if i < 10 else 'old'}:{i}", "v")
    with emulator.ledger.step("scan"):
        assert len(list(kv.keys("job:"))) == 10
    assert emulator.ledger.count(step="scan", op="keys:page") == 5


def test_adapter_entries_expire_after_seven_idle_days(emulator: ModalEmulator) -> None:
    """dict.py:265: what the contract cannot say, the emulator shows (issue 9, item 2)."""
    kv = ModalBackend("t", "dev").kv("tenants")
    kv.put("tenant:acme", "{}")
    emulator.clock.advance(ENTRY_TTL_S)
    assert kv.get("tenant:acme") is None
