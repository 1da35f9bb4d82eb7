"""Functions, containers, spawn, cancel and schedules (modal 1.6.4 `_functions.py`,
`_container_entrypoint.py`, `schedule.py`)."""

from __future__ import annotations

import threading
import time
from typing import Any

import modal
import pytest
from modal.exception import InputCancellation

from tests.modal_emulator import ContainerStopped, ModalEmulator
from tests.modal_emulator.functions import CANCELLED, SUCCEEDED, next_cron_time


def _blocker(emu: ModalEmulator, started: list[str], gate: threading.Event) -> Any:
    def body(tag: str) -> str:
        started.append(tag)
        q = modal.Queue.from_name("work", create_if_missing=True)
        while not gate.is_set():
            q.len()  # an emulated call: where a pending cancel is delivered
            time.sleep(0.002)
        return tag

    return body


def test_calls_run_in_max_containers_times_max_inputs_slots(emu: ModalEmulator) -> None:
    """`@app.function(max_containers=N)` x `@modal.concurrent(max_inputs=M)`: at most N*M
    inputs run at once; the rest wait in the function's input queue (`get_current_stats`)."""
    started: list[str] = []
    gate = threading.Event()
    fn = emu.function("f", _blocker(emu, started, gate), max_containers=2, max_inputs=3)
    calls = [fn.spawn(str(i)) for i in range(10)]
    deadline = time.monotonic() + 5
    while len(started) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(started) == 6
    assert fn.get_current_stats().backlog == 4
    assert len([c for c in fn.containers if not c.stopped]) == 2
    gate.set()
    assert sorted(c.get(timeout=5) for c in calls) == sorted(str(i) for i in range(10))


def test_spawn_is_one_round_trip_and_from_id_is_free(emu: ModalEmulator) -> None:
    """_functions.py:2258 spawn -> `_call_function_nowait` (one RPC); _functions.py:2566-2570
    from_id's loader "doesn't do anything in practice"; cancel is one RPC (2531-2534)."""
    fn = emu.function("f", lambda: 1)
    with emu.ledger.step("s"):
        call = fn.spawn()
        again = modal.FunctionCall.from_id(call.object_id)
    assert again is call  # type: ignore[comparison-overlap]  # from_id is emulated
    assert [r.op for r in emu.ledger.calls(step="s")] == ["spawn"]
    assert call.get(timeout=5) == 1


def test_cancel_with_one_input_per_container_cancels_only_that_input(emu: ModalEmulator) -> None:
    """_container_entrypoint.py:255-258: without input concurrency the cancel is SIGUSR1,
    raising `InputCancellation("Input was cancelled by user")` in that input only."""
    started: list[str] = []
    gate = threading.Event()
    fn = emu.function("r", _blocker(emu, started, gate), max_containers=2, max_inputs=1)
    a, b = fn.spawn("a"), fn.spawn("b")
    while len(started) < 2:
        time.sleep(0.005)
    modal.FunctionCall.from_id(a.object_id).cancel()
    a.done.wait(5)
    assert a.status == CANCELLED
    gate.set()
    assert b.get(timeout=5) == "b"
    with pytest.raises(InputCancellation):
        a.get(timeout=1)


def test_cancel_with_max_inputs_over_one_stops_the_whole_container(emu: ModalEmulator) -> None:
    """_container_entrypoint.py:204-217: with input concurrency, cancelling one sync input
    "shuts down the container, causing concurrently running inputs to be rescheduled in other
    containers": siblings die mid-message (ContainerStopped) and run again from the start."""
    started: list[str] = []
    gate = threading.Event()
    stopped_mid_message: list[str] = []

    def body(tag: str) -> str:
        started.append(tag)
        q = modal.Queue.from_name("work", create_if_missing=True)
        try:
            while not gate.is_set():
                q.len()
                time.sleep(0.002)
        except ContainerStopped:
            stopped_mid_message.append(tag)
            raise
        return tag

    fn = emu.function("cpu", body, max_containers=1, max_inputs=3)
    calls = [fn.spawn(t) for t in "abc"]
    while len(started) < 3:
        time.sleep(0.005)
    first_container = fn.containers[0]
    calls[0].cancel()
    deadline = time.monotonic() + 5
    while len(stopped_mid_message) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sorted(stopped_mid_message) == ["b", "c"]
    assert first_container.stopped
    gate.set()
    assert calls[1].get(timeout=5) == "b" and calls[2].get(timeout=5) == "c"
    assert calls[1].attempts == 2  # rescheduled in a new container
    assert calls[0].status == CANCELLED


def test_a_cancelled_pending_call_never_runs(manual: ModalEmulator) -> None:
    """_functions.py:2524: cancel "terminate[s] its inputs without retrying": one that has not
    started is dropped."""
    ran: list[int] = []
    fn = manual.function("f", lambda: ran.append(1))
    call = fn.spawn()
    call.cancel()
    assert manual.run_until_idle() == 0
    assert ran == [] and call.status == CANCELLED


def test_manual_mode_runs_inputs_only_when_stepped(manual: ModalEmulator) -> None:
    """Deterministic mode (emulator-only): spawn enqueues; `step()` runs one input here."""
    order: list[int] = []
    fn = manual.function("f", lambda i: order.append(i), max_inputs=4)
    for i in range(3):
        fn.spawn(i)
    assert order == []
    assert manual.step()
    assert order == [0]
    assert manual.run_until_idle() == 2
    assert order == [0, 1, 2]


def test_a_crash_loses_uncommitted_volume_writes_and_reschedules(manual: ModalEmulator) -> None:
    """_runtime/user_code_imports.py:109 (volumes are committed when a container shuts down
    normally); a killed container's other inputs stop mid-message and are retried."""
    vol = modal.Volume.from_name("v", create_if_missing=True)
    attempts: list[int] = []

    def body() -> None:
        from tests.modal_emulator.context import current_input

        ctx = current_input()
        assert ctx is not None
        ctx.container.path("/data/half").write_text("x")
        attempts.append(1)
        if len(attempts) == 1:
            ctx.container.function.crash(ctx.container)
            modal.Queue.from_name("q", create_if_missing=True).len()  # delivery point

    fn = manual.function("f", body, volumes={"/data": vol})
    call = fn.spawn()
    manual.run_until_idle()
    assert len(attempts) == 2 and call.status == SUCCEEDED
    assert manual.volumes[(None, "v")].files == {}  # nothing committed, crash lost it
    fn.stop_all()
    assert manual.volumes[(None, "v")].files == {"half": b"x"}  # graceful stop commits


def test_stop_fetching_inputs_drains_the_container(manual: ModalEmulator) -> None:
    """experimental/__init__.py:51-53: "Don't fetch any more inputs ... The container will exit
    gracefully after the current input is processed"."""
    import modal.experimental

    seen: list[str] = []

    def body() -> None:
        from tests.modal_emulator.context import current_input

        ctx = current_input()
        assert ctx is not None
        seen.append(ctx.container.id)
        modal.experimental.stop_fetching_inputs()

    fn = manual.function("f", body, max_inputs=2)
    fn.spawn()
    fn.spawn()
    manual.run_until_idle()
    assert len(set(seen)) == 2  # the second input got a fresh container


def test_period_schedule_fires_when_the_clock_advances(manual: ModalEmulator) -> None:
    """schedule.py:61-75 `modal.Period(minutes=15)` "runs every 15 minutes"; schedules run
    only when deployed, from deploy time."""
    ran: list[float] = []
    manual.function(
        "tick", lambda: ran.append(manual.clock.now()), schedule=modal.Period(minutes=15)
    )
    manual.advance(60 * 60)
    assert len(ran) == 4
    assert ran[1] - ran[0] == pytest.approx(900, abs=1)


def test_cron_schedule_fires_each_matching_utc_minute(manual: ModalEmulator) -> None:
    """schedule.py:36-47: `modal.Cron("* * * * *")` "will run every minute"; `"5 4 * * *"`
    runs "at 4:05am UTC every night"."""
    every: list[int] = []
    nightly: list[int] = []
    manual.function("sweep", lambda: every.append(1), schedule=modal.Cron("* * * * *"))
    manual.function("cleanup", lambda: nightly.append(1), schedule=modal.Cron("5 4 * * *"))
    manual.advance(2 * 86400)
    assert len(every) == 2 * 1440
    assert len(nightly) == 2
    at = next_cron_time("5 4 * * *", 1_767_225_600.0)  # 2026-01-01T00:00Z
    assert at == 1_767_225_600.0 + 4 * 3600 + 5 * 60
    # schedule.py:46 `"0 9 * * 4"` "runs every Thursday at 9am UTC" (2026-01-01 is a Thursday)
    assert next_cron_time("0 9 * * 4", 1_767_225_600.0) == 1_767_225_600.0 + 9 * 3600
    assert next_cron_time("0 9 * * 4", 1_767_225_600.0 + 10 * 3600) == 1_767_225_600.0 + (
        7 * 86400 + 9 * 3600
    )


def test_current_call_id_and_is_local_inside_an_input(manual: ModalEmulator) -> None:
    """_runtime/execution_context.py:60-76 `current_function_call_id()` is the input's call id,
    None outside; `modal.is_local()` is False inside a container."""
    seen: list[object] = []
    fn = manual.function(
        "f", lambda: seen.extend([modal.current_function_call_id(), modal.is_local()])
    )
    call = fn.spawn()
    manual.run_until_idle()
    assert seen == [call.object_id, False]
    assert modal.current_function_call_id() is None and modal.is_local() is True
