"""Following a prompt through websocket message sequences captured from a real ComfyUI."""

from __future__ import annotations

import json

from app.adapters.comfy.tracker import RunTracker
from tests.paths import FIXTURES


def replay(name: str, prompt_id: str | None = None) -> tuple[RunTracker, list[float]]:
    capture = json.loads((FIXTURES / name).read_text())
    [history_id] = list(capture["history"])[:1]
    prompt_id = prompt_id or history_id
    entry = capture["history"][history_id]
    entry = entry.get(history_id, entry)
    tracker = RunTracker(prompt_id, entry["prompt"][2])
    fractions: list[float] = []
    for message in capture["ws"]:
        tracker.handle(message)
        fractions.append(tracker.progress().fraction)
    return tracker, fractions


def test_success_sequence():
    tracker, fractions = replay("run_empty_invert_save.json")

    assert tracker.terminal is not None and tracker.terminal.kind == "success"
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert max(f for f in fractions if f < 1.0) <= 0.99
    progress = tracker.progress()
    assert (progress.nodes_done, progress.nodes_total) == (3, 3)
    assert [o.filename for o in tracker.executed_outputs()] == ["probe_invert_00001_.png"]


def test_cached_sequence():
    tracker, _ = replay("run_same_again_cached.json")

    assert tracker.terminal is not None and tracker.terminal.kind == "success"
    assert tracker.cached_nodes == {"1", "2", "3"}
    assert [o.node_id for o in tracker.executed_outputs()] == ["3"]


def test_error_sequence():
    tracker, fractions = replay("run_execution_error.json")

    assert tracker.terminal is not None and tracker.terminal.kind == "error"
    assert tracker.terminal.data["node_id"] == "3"
    assert fractions[-1] < 1.0


def test_interrupt_sequence_stops_at_our_prompt_and_ignores_the_next():
    tracker, _ = replay("run_interrupted.json")

    assert tracker.terminal is not None and tracker.terminal.kind == "interrupted"
    assert tracker.progress().node_id == "11"


def test_other_prompts_are_ignored():
    tracker, fractions = replay("run_empty_invert_save.json", prompt_id="someone-else")

    assert tracker.terminal is None
    assert set(fractions) == {0.0}
    assert tracker.executed == {}


def test_sampler_progress_moves_within_a_node():
    tracker = RunTracker("p", {"1": {"class_type": "A"}, "2": {"class_type": "KSampler"}})
    tracker.handle({"type": "executing", "data": {"node": "1", "prompt_id": "p"}})
    tracker.handle({"type": "executing", "data": {"node": "2", "prompt_id": "p"}})
    tracker.handle(
        {"type": "progress", "data": {"value": 5, "max": 20, "node": "2", "prompt_id": "p"}}
    )

    progress = tracker.progress()
    assert (progress.node_id, progress.node_type, progress.value, progress.max) == (
        "2",
        "KSampler",
        5.0,
        20.0,
    )
    assert progress.fraction == (1 + 5 / 20) / 2

    tracker.handle(
        {"type": "progress", "data": {"value": 1, "max": 20, "node": "2", "prompt_id": "p"}}
    )
    assert tracker.progress().fraction == (1 + 5 / 20) / 2  # never backwards


def test_garbage_is_ignored():
    tracker = RunTracker("p", {})
    for message in [
        None,
        "x",
        {"type": "executing"},
        {"type": "progress_state", "data": {"prompt_id": "p", "nodes": 3}},
    ]:
        tracker.handle(message)

    assert tracker.terminal is None
