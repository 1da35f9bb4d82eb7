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
        ("missing_input", "node 1 (EmptyImage): input 'height': a required input is missing"),
        (
            "bad_combo_value",
            (
                "node 2 (ImageScale): input 'upscale_method': "
                "the value is not one of the choices this server offers"
            ),
        ),
        ("value_out_of_range", "node 1 (EmptyImage): input 'width': 0 is below the minimum 1"),
        (
            "type_mismatch_link",
            "node 3 (SaveImage): input 'images': the linked output is INT, this input takes IMAGE",
        ),
        ("bad_link", "node 3 (SaveImage): could not be validated"),
        (
            "loadimage_missing_file",
            "node 1 (LoadImage): input 'image': the node's own check refused the value",
        ),
        ("unknown_class", "a node's type is not installed on this server (node 1)"),
        ("missing_class_type", "a node has no class_type (node 1)"),
        ("no_output_node", "the workflow has no output node"),
        ("no_prompt_key", "no workflow was sent"),
    ],
)
def test_validation_messages(case, expected):
    message = validation_message(VALIDATION[case])

    assert message.startswith("ComfyUI rejected the workflow: ")
    assert expected in message
    assert "traceback" not in message.lower() and 'File "' not in message


@pytest.mark.parametrize("case", sorted(VALIDATION))
def test_no_validation_message_repeats_comfyuis_details(case):
    message = validation_message(VALIDATION[case])
    node_errors = VALIDATION[case].get("node_errors") or {}
    for entry in node_errors.values():
        for error in entry["errors"]:
            if len(error["details"]) > 8:
                assert error["details"] not in message
    assert "[" not in message and "/" not in message


def test_a_folder_listing_and_host_paths_never_reach_the_caller():
    """The issue's leak: LoadImageSetFromFolderNode's "Value not in list" lists job folders."""
    other_job = "job_0123456789abcdef0123456789abcdef"
    body = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": f"/opt/ComfyUI/input/{other_job}",
        },
        "node_errors": {
            "5": {
                "class_type": "LoadImageSetFromFolderNode",
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"folder: 'x' not in ['{other_job}', 'probe_sub']",
                        "extra_info": {
                            "input_name": "folder",
                            "input_config": [[other_job, "probe_sub"], {}],
                            "received_value": "x",
                        },
                    }
                ],
            },
            "6": {
                "class_type": "LoadImage",
                "errors": [
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": "image - Invalid image file: /etc/passwd",
                        "extra_info": {"input_name": "image"},
                    }
                ],
            },
            "7": {
                "class_type": "Evil/../x",
                "errors": [{"type": "x", "extra_info": {"input_name": ["not", "a", "name"]}}],
            },
        },
    }
    message = validation_message(body)
    assert other_job not in message and "probe_sub" not in message
    assert "/etc" not in message and "/opt" not in message and "/" not in message
    assert "node 5 (LoadImageSetFromFolderNode): input 'folder': the value is not one of" in message
    assert "node 6 (LoadImage): input 'image'" in message
    assert "node 7: the value is invalid" in message


def test_validation_message_of_garbage():
    assert validation_message("oops") == "ComfyUI rejected the workflow"
    assert validation_message({"error": "bad"}) == (
        "ComfyUI rejected the workflow: the workflow is not valid"
    )


@pytest.mark.parametrize(
    "said",
    [
        "[Errno 2] No such file or directory: '/opt/ComfyUI/input/job_0123abcd/secret-a.png'",
        "cannot identify image file '/work/data/signing.key'",
        "Invalid image file: job_0123abcd/secret-a.png",
        "'probe_sub'",
        "C:\\ComfyUI\\models\\x.safetensors",
        "file secret-a.png is missing",
    ],
)
def test_execution_errors_keep_paths_and_names_out(said):
    data = {"node_id": "4", "node_type": "LoadImage", "exception_type": "OSError"}
    error = failure(PromptEnding("error", {**data, "exception_message": said}))
    assert error.message == "node 4 (LoadImage) failed: OSError (details are in the render log)"
    assert (error.node_id, error.node_type) == ("4", "LoadImage")


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
