"""The RPC ledger, latency and retry faults (MODAL-FACTS.md: "Each operation is one network
round trip, 'a few dozen ms' per the docs"; "Unary RPCs are retried by the client")."""

from __future__ import annotations

import asyncio
import threading

import modal
import pytest

from tests.modal_emulator import DEFAULT_LATENCY_S, Faults, ModalEmulator


def test_each_op_is_one_round_trip_with_25ms_default_latency(emu: ModalEmulator) -> None:
    """Every SDK method is one `self.client._stub.<Rpc>(...)` call (dict.py:494-600,
    queue.py:485-750): charged `DEFAULT_LATENCY_S` (25 ms) of simulated time each."""
    d = modal.Dict.from_name("d", create_if_missing=True)
    d.get("warm-up")
    before = emu.clock.now()
    with emu.ledger.step("three"):
        d.put("a", 1)
        d.get("a")
        d.pop("a")
    assert DEFAULT_LATENCY_S == 0.025
    assert emu.ledger.count(step="three") == 3
    assert emu.clock.now() - before == pytest.approx(3 * 0.025, abs=1e-5)


def test_latency_is_configurable_per_op() -> None:
    """The cost model is a setting: `latency_per_op` overrides the default for one op."""
    emu = ModalEmulator(latency_s=0.01, latency_per_op={"spawn": 0.2})
    with emu.install():
        fn = emu.function("f", lambda: None)
        start = emu.clock.now()
        fn.spawn()
        assert emu.clock.now() - start == pytest.approx(0.2, abs=1e-5)
        emu.wait_idle()


def test_sequential_counts_only_the_longest_chain_when_calls_overlap() -> None:
    """Calls in sequence: concurrent calls (threads or `.aio` with gather) overlap in real time
    when latency is slept for real, and count once on the critical path."""
    emu = ModalEmulator(real_latency_scale=2.0)  # 50 ms real per call: overlap is robust
    with emu.install():
        d = modal.Dict.from_name("d", create_if_missing=True)
        d.get("hydrate")

        async def concurrent() -> None:
            await asyncio.gather(*(d.put.aio(f"k{i}", i) for i in range(4)))

        with emu.ledger.step("post"):
            d.get("auth")  # 1
            asyncio.run(concurrent())  # 4 at once: +1
            threads = [threading.Thread(target=d.get, args=(f"k{i}",)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()  # 3 at once: +1
            d.put("done", 1)  # +1
        assert emu.ledger.count(step="post") == 9
        assert emu.ledger.sequential("post") == 4


def test_without_real_latency_sequential_never_undercounts(emu: ModalEmulator) -> None:
    """Instant calls never overlap, so the chain equals the total: never flattering."""
    d = modal.Dict.from_name("d", create_if_missing=True)
    with emu.ledger.step("s"):
        for i in range(5):
            d.put(i, i)
    assert emu.ledger.sequential("s") == emu.ledger.count(step="s") == 6


def test_retried_put_if_absent_answers_false_to_its_winner() -> None:
    """MODAL-FACTS.md: the client retries unary RPCs; if the first `DictUpdate(if_not_exists)`
    wrote but its answer was lost, the retry finds the key and the winner is told False."""
    emu = ModalEmulator(faults=Faults(lost_ack_next=1))
    with emu.install():
        d = modal.Dict.from_name("slots", create_if_missing=True)
        assert d.put("slot:1", "me", skip_if_exists=True) is False
        assert d.get("slot:1") == "me"  # but it did write
        assert d.put("slot:1", "other", skip_if_exists=True) is False
        assert emu.ledger.faults_fired == ["lost_ack"]
        assert emu.ledger.count(op="put") == 2


def test_retried_get_loses_an_item() -> None:
    """MODAL-FACTS.md: a `QueueGet` whose response is lost removed the item anyway; the retry
    returns the next one."""
    emu = ModalEmulator(faults=Faults(lost_get_next=1))
    with emu.install():
        q = modal.Queue.from_name("q", create_if_missing=True)
        q.put_many(["a", "b", "c"])
        assert q.get() == "b"
        assert q.get_many(5) == ["c"]
        assert emu.ledger.faults_fired == ["lost_get"]


def test_fault_rates_are_seeded_and_reproducible() -> None:
    """Rates draw from a seeded RNG, so a failing month replays exactly."""

    def run() -> list[bool]:
        emu = ModalEmulator(faults=Faults(seed=7, lost_ack_rate=0.3))
        with emu.install():
            d = modal.Dict.from_name("d", create_if_missing=True)
            return [bool(d.put(i, i, skip_if_exists=True)) for i in range(50)]

    first, second = run(), run()
    assert first == second
    assert 5 < first.count(False) < 30
