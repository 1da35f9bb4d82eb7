"""Reading ComfyUI's answers, checked on responses captured from a real server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.adapters.comfy.messages import (
    ComfyOutput,
    PromptEnding,
    failure,
    outputs_from,
    read_history,
    select_outputs,
    validation_message,
)
from tests.paths import FIXTURES

VALIDATION = json.loads((FIXTURES / "validation_errors.json").read_text())


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_input", "node 1 (EmptyImage): Required input is missing: height"),
        (
            "bad_combo_value",
            "node 2 (ImageScale): Value not in list: upscale_method: 'nope' not in",
        ),
        ("value_out_of_range", "node 1 (EmptyImage): Value 0 smaller than min of 1: width"),
        (
            "type_mismatch_link",
            "node 3 (SaveImage): Return type mismatch between linked nodes: images",
        ),
        ("bad_link", "node 3 (SaveImage): Exception when validating node: '99'"),
        ("loadimage_missing_file", "Invalid image file: does_not_exist.png"),
        ("unknown_class", "Cannot execute because node NoSuchNode does not exist. (Node ID '#1')"),
        ("missing_class_type", "missing the class_type property. (Node ID '#1')"),
        ("no_output_node", "Prompt has no outputs"),
        ("no_prompt_key", "No prompt provided"),
    ],
)
def test_validation_messages(case, expected):
    message = validation_message(VALIDATION[case])

    assert message.startswith("ComfyUI rejected the workflow: ")
    assert expected in message
    assert "traceback" not in message.lower() and 'File "' not in message


def test_validation_message_of_garbage():
    assert validation_message("oops") == "ComfyUI rejected the workflow"
    assert validation_message({"error": "bad"}) == "ComfyUI rejected the workflow: bad"


def test_execution_error_becomes_render_failed_without_traceback():
    [data] = [
        m["data"]
        for m in fixture("run_execution_error.json")["ws"]
        if m["type"] == "execution_error"
    ]

    error = failure(PromptEnding("error", data))

    assert (error.node_id, error.node_type, error.code) == ("3", "ImageBlend", "render_failed")
    assert error.message == (
        "node 3 (ImageBlend) failed: RuntimeError: The size of tensor a (2) must match "
        "the size of tensor b (3) at non-singleton dimension 0"
    )


def test_unrequested_interrupt_becomes_render_failed():
    error = failure(
        PromptEnding("interrupted", fixture("run_interrupted.json")["terminal_msg"]["data"])
    )

    assert error.message == "ComfyUI interrupted the workflow at node 11 (ImageBlur)"
    assert error.node_id == "11"


def test_long_exception_text_is_cut():
    data = {
        "node_id": "1",
        "node_type": "X",
        "exception_type": "E",
        "exception_message": "x" * 5000,
    }

    assert len(failure(PromptEnding("error", data)).message) < 400


def test_outputs_of_every_kind():
    outputs = outputs_from(
        {
            "3": {
                "images": [{"filename": "a.png", "subfolder": "s", "type": "output"}],
                "animated": [True],
            },
            "4": {
                "gifs": [
                    {
                        "filename": "b.mp4",
                        "subfolder": "",
                        "type": "output",
                        "format": "video/h264-mp4",
                    }
                ]
            },
            "5": {"audio": [{"filename": "c.flac", "subfolder": "", "type": "output"}]},
            "6": {"text": ["hello"]},
            "7": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
        }
    )

    assert outputs == [
        ComfyOutput("3", "a.png", "s", "output", "images"),
        ComfyOutput("4", "b.mp4", "", "output", "gifs"),
        ComfyOutput("5", "c.flac", "", "output", "audio"),
        ComfyOutput("7", "p.png", "", "temp", "images"),
    ]
    assert [o.filename for o in select_outputs(outputs)] == ["a.png", "b.mp4", "c.flac"]
    assert select_outputs(outputs[3:]) == [outputs[3]]
    assert select_outputs([ComfyOutput("1", "in.png", "", "input")]) == []


def test_read_history_success_error_interrupt_and_cached():
    ok = fixture("run_empty_invert_save.json")["history"]
    [ok_id] = ok
    entry = read_history(ok, ok_id)
    assert entry is not None and entry.terminal.kind == "success"
    assert entry.outputs == [ComfyOutput("3", "probe_invert_00001_.png", "", "output")]

    err = fixture("run_execution_error.json")["history"]
    [err_id] = err
    entry = read_history(err, err_id)
    assert entry is not None and entry.terminal.kind == "error" and entry.outputs == []
    assert entry.terminal.data["node_type"] == "ImageBlend"

    interrupted = fixture("run_interrupted.json")["history"]
    first_id = next(iter(interrupted))
    entry = read_history(interrupted[first_id], first_id)
    assert entry is not None and entry.terminal.kind == "interrupted"

    cached = fixture("run_same_again_cached.json")["history"]
    [cached_id] = cached
    entry = read_history(cached, cached_id)
    assert entry is not None and entry.cached_nodes == {"1", "2", "3"}


def test_read_history_not_there_yet():
    assert read_history({}, "p") is None
    assert read_history({"other": {}}, "p") is None
    assert read_history(None, "p") is None
