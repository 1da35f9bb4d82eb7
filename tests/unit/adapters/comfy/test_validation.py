"""ComfyUI's input rules from the node catalog, against the full `/object_info` capture."""

from __future__ import annotations

import copy
import gzip
import json
from typing import Any

import pytest

from app.adapters.comfy import validation
from app.adapters.comfy.catalog import NodeCatalog
from app.adapters.comfy.validation import check_inputs, types_match
from app.api.http_errors import invalid_request_fields
from app.core.errors import InvalidNodes, InvalidWorkflow
from tests.paths import FIXTURES

FULL = json.loads(gzip.decompress((FIXTURES / "object_info_full.json.gz").read_bytes()))
#: Read back from the stored form, as intake reads it.
CATALOG = NodeCatalog.from_record(NodeCatalog.from_object_info(FULL).to_record())

TXT2IMG: dict[str, Any] = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 512, "height": 512, "batch_size": 1},
    },
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
            "seed": 42,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "x"}},
}


def graph(**changes: Any) -> dict[str, Any]:
    """TXT2IMG with `KSampler` inputs changed (None removes one)."""
    g = copy.deepcopy(TXT2IMG)
    for name, value in changes.items():
        if value is None:
            del g["3"]["inputs"][name]
        else:
            g["3"]["inputs"][name] = value
    return g


def refusal(g: dict[str, Any]) -> InvalidNodes:
    with pytest.raises(InvalidNodes) as caught:
        check_inputs(g, CATALOG)
    return caught.value


def only_error(g: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    errors = refusal(g).node_errors
    assert len(errors) == 1
    ((node_id, entry),) = errors.items()
    assert len(entry["errors"]) == 1
    return node_id, entry["errors"][0]


def test_a_complete_txt2img_graph_is_accepted() -> None:
    verdict = check_inputs(TXT2IMG, CATALOG)
    assert verdict.good_outputs == ("9",) and not verdict.node_errors


def test_a_missing_required_input_is_named_with_its_node() -> None:
    exc = refusal(graph(steps=None))
    assert isinstance(exc, InvalidWorkflow) and exc.code == "invalid_workflow"
    assert (exc.node_id, exc.field) == ("3", "steps")
    assert "required input is missing (KSampler)" in exc.message
    assert exc.node_errors == {
        "3": {
            "class_type": "KSampler",
            "dependent_outputs": ["9"],
            "errors": [
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": "steps",
                    "extra_info": {"input_name": "steps"},
                }
            ],
        }
    }


def test_the_http_answer_carries_the_problems_and_comfys_node_errors() -> None:
    status, extra = invalid_request_fields(refusal(graph(steps=0)))
    assert status == 400
    assert extra["node_id"] == "3" and extra["field"] == "steps"
    assert extra["problems"][0]["reason"] == "0 is below the minimum 1 (KSampler)"
    assert extra["node_errors"]["3"]["errors"][0]["type"] == "value_smaller_than_min"


def test_optional_hidden_and_undeclared_inputs_are_never_required_nor_checked() -> None:
    g = graph(control_after_generate="randomize", unique_id="x", prompt={"a": 1})
    g["10"] = {"class_type": "DifferentialDiffusion", "inputs": {"model": ["4", 0]}}
    g["3"]["inputs"]["model"] = ["10", 0]  # its optional `strength` is absent
    assert check_inputs(g, CATALOG).good_outputs == ("9",)
    g["10"]["inputs"]["strength"] = 2.0  # present: checked (max 1.0)
    assert only_error(g)[1]["type"] == "value_bigger_than_max"


def test_a_link_must_come_from_an_output_of_the_inputs_type() -> None:
    node_id, error = only_error(graph(model=["6", 0]))  # CONDITIONING into MODEL
    assert node_id == "3" and error["type"] == "return_type_mismatch"
    assert error["details"] == "model, received_type(CONDITIONING) mismatch input_type(MODEL)"


def test_star_and_comma_types_match_as_comfy_matches_them() -> None:
    assert types_match("LATENT", "*") and types_match("*", "MODEL")
    assert types_match("INT", "FLOAT,INT") and types_match("FLOAT,INT", "INT")
    assert types_match("RIG_TASK_ID", "MODEL_TASK_ID,RIG_TASK_ID,RETARGET_TASK_ID")
    assert not types_match("IMAGE", "MASK") and not types_match("INT,FLOAT", "STRING")
    g = copy.deepcopy(TXT2IMG)
    g["10"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}  # "*" takes LATENT
    assert set(check_inputs(g, CATALOG).good_outputs) == {"9", "10"}


def test_a_widget_fed_by_a_link_takes_its_type_and_a_list_of_choices_takes_none() -> None:
    g = copy.deepcopy(TXT2IMG)
    g["11"] = {"class_type": "PrimitiveInt", "inputs": {"value": 7}}
    g["12"] = {"class_type": "PrimitiveString", "inputs": {"value": "euler"}}
    g["3"]["inputs"]["seed"] = ["11", 0]
    assert check_inputs(g, CATALOG).good_outputs == ("9",)
    g["3"]["inputs"]["steps"] = ["12", 0]  # STRING into INT
    assert only_error(g)[1]["type"] == "return_type_mismatch"
    g["3"]["inputs"]["steps"] = 20
    g["3"]["inputs"]["sampler_name"] = ["12", 0]  # ComfyUI links old-style choices to `*` only
    assert only_error(g)[1]["details"].startswith("sampler_name, received_type(STRING)")


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("steps", 0, "value_smaller_than_min"),
        ("steps", 10001, "value_bigger_than_max"),
        ("seed", 18446744073709551616, "value_bigger_than_max"),
        ("seed", -1, "value_smaller_than_min"),
        ("cfg", 100.5, "value_bigger_than_max"),
        ("denoise", "-0.1", "value_smaller_than_min"),
        ("steps", "abc", "invalid_input_type"),
        ("steps", "2.5", "invalid_input_type"),  # int("2.5") fails in ComfyUI too
        ("cfg", "fast", "invalid_input_type"),
        ("steps", None, "invalid_input_type"),
        ("steps", {"__value__": 0}, "value_smaller_than_min"),
    ],
)
def test_numbers_are_converted_then_kept_within_min_and_max(
    name: str, value: object, kind: str
) -> None:
    g = graph(**{name: value}) if value is not None else graph()
    if value is None:
        g["3"]["inputs"][name] = None
    node_id, error = only_error(g)
    assert (node_id, error["type"], error["extra_info"]["input_name"]) == ("3", kind, name)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("seed", 18446744073709551615),  # the max itself
        ("steps", "20"),  # number strings ComfyUI converts
        ("steps", 20.9),  # int(20.9) == 20
        ("steps", True),  # int(True) == 1
        ("cfg", "7.5"),
        ("cfg", "1e1"),
        ("denoise", 0),
        ("cfg", {"__value__": 7.0}),
    ],
)
def test_what_comfy_converts_and_keeps_in_range_is_accepted(name: str, value: object) -> None:
    assert check_inputs(graph(**{name: value}), CATALOG).good_outputs == ("9",)


def test_an_old_style_choice_must_be_listed_but_a_v3_combo_is_left_to_the_node() -> None:
    _, error = only_error(graph(sampler_name="bogus"))
    assert error["type"] == "value_not_in_list" and error["details"].startswith("sampler_name:")
    g = copy.deepcopy(TXT2IMG)
    g["13"] = {
        "class_type": "ImageBlend",
        "inputs": {
            "image1": ["8", 0],
            "image2": ["8", 0],
            "blend_factor": 0.5,
            "blend_mode": "bogus",  # V3 "COMBO": ComfyUI's /prompt accepts it (answers 200)
        },
    }
    g["14"] = {"class_type": "PreviewImage", "inputs": {"images": ["13", 0]}}
    assert set(check_inputs(g, CATALOG).good_outputs) == {"9", "14"}


def test_a_multiselect_value_is_written_as_a_value_and_accepted() -> None:
    info = {
        "Pick": {
            "input": {
                "required": {
                    "tags": ["COMBO", {"multiselect": True, "options": ["a", "b", "c"]}],
                }
            },
            "output": [],
            "output_node": True,
        }
    }
    catalog = NodeCatalog.from_object_info(info)
    g = {"1": {"class_type": "Pick", "inputs": {"tags": {"__value__": ["a", "c"]}}}}
    assert check_inputs(g, catalog).good_outputs == ("1",)


def test_file_names_and_self_validated_inputs_are_left_to_their_owners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = graph()
    g["4"]["inputs"]["ckpt_name"] = "not-a-model.safetensors"  # file_policy's
    g["15"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    g["16"] = {"class_type": "PreviewImage", "inputs": {"images": ["15", 0]}}
    assert set(check_inputs(g, CATALOG).good_outputs) == {"9", "16"}
    camera = {
        "1": {
            "class_type": "KlingCameraControls",  # its own validate_inputs checks these
            "inputs": {
                "camera_control_type": "simple",
                "horizontal_movement": 99.0,
                "vertical_movement": 0.0,
                "pan": 0.0,
                "tilt": 0.0,
                "roll": 0.0,
                "zoom": 0.0,
            },
        },
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    assert check_inputs(camera, CATALOG).good_outputs == ("2",)
    monkeypatch.delitem(validation.SELF_VALIDATED, "KlingCameraControls")
    assert only_error(camera)[1]["type"] == "value_bigger_than_max"


def test_only_nodes_that_feed_an_output_are_checked() -> None:
    g = copy.deepcopy(TXT2IMG)
    g["20"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 0}}  # feeds nothing
    assert check_inputs(g, CATALOG).good_outputs == ("9",)


def test_a_partly_broken_graph_is_refused_with_comfys_verdict_on_each_output() -> None:
    g = copy.deepcopy(TXT2IMG)
    g["21"] = {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1}}
    g["22"] = {"class_type": "PreviewImage", "inputs": {"images": ["21", 0]}}
    verdict = validation.validate(g, CATALOG)  # ComfyUI would run "9" and drop "22"
    assert verdict.good_outputs == ("9",)
    assert verdict.comfy_node_errors()["21"]["dependent_outputs"] == ["22"]
    exc = refusal(g)  # our render refuses such an answer, so submit refuses the graph
    assert set(exc.node_errors) == {"21"}
    assert [p.field for p in exc.problems] == ["width", "color"]
    g["5"]["inputs"]["width"] = 0
    assert set(refusal(g).node_errors) == {"5", "21"}
    assert validation.validate(g, CATALOG).good_outputs == ()


def test_an_error_upstream_is_reported_on_its_node_not_on_the_ones_it_stops() -> None:
    g = copy.deepcopy(TXT2IMG)
    g["5"]["inputs"]["batch_size"] = 0
    node_id, error = only_error(g)
    assert node_id == "5" and error["type"] == "value_smaller_than_min"


def test_the_catalog_keeps_which_choices_comfy_checks_across_storage() -> None:
    ksampler = CATALOG.get("KSampler")
    blend = CATALOG.get("ImageBlend")
    assert ksampler is not None and blend is not None
    assert (
        ksampler.fields["sampler_name"].listed
        and "euler" in ksampler.fields["sampler_name"].choices
    )
    assert not blend.fields["blend_mode"].listed
    assert ksampler.fields["seed"].maximum == 18446744073709551615
