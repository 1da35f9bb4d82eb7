"""Templates compiled against a real node catalog, and runs resolved against them."""

from __future__ import annotations

from typing import Any

import pytest

from app.adapters.comfy.node_policy import NodePolicy
from app.adapters.comfy.templates import compile_template, resolve
from app.core.errors import InvalidInput, InvalidTemplate, InvalidWorkflow
from app.core.templates import InputDef, Template, json_schema
from tests.support import templates as fx

LIMITS = {"max_nodes": 500, "max_bytes": 512 * 1024, "max_inputs": 64}


def compile_(
    graph: Any = None, inputs: dict[str, Any] | None = None, policy: NodePolicy | None = None
) -> Template:
    parsed = {k: InputDef.model_validate(v) for k, v in (inputs or fx.spec()).items()}
    checked, compiled = compile_template(
        fx.graph() if graph is None else graph,
        parsed,
        fx.catalog(),
        policy or NodePolicy(),
        **LIMITS,
    )
    return Template(
        tenant_id="tn_1", name="portrait", version=3, workflow=checked, inputs=compiled,
        created_at=0.0,
    )  # fmt: skip


def refused(inputs: dict[str, Any]) -> InvalidTemplate:
    with pytest.raises(InvalidTemplate) as caught:
        compile_(None, inputs)
    return caught.value


# ---- registration ---------------------------------------------------------------------


def test_bounds_and_choices_come_from_the_catalog_and_may_be_narrowed() -> None:
    template = compile_()
    steps, cfg, seed = (template.inputs[n] for n in ("steps", "cfg", "seed"))
    assert (steps.minimum, steps.maximum) == (1, 50)  # catalog min, template's narrower max
    assert (cfg.minimum, cfg.maximum) == (0.0, 100.0)
    assert (seed.minimum, seed.maximum) == (0, 18446744073709551615)
    assert "dpmpp_2m" in (template.inputs["sampler"].choices or [])
    assert template.inputs["model"].choices == fx.CHECKPOINTS
    size = template.inputs["size"]
    assert (size.minimum, size.maximum, size.places) == (
        64,
        1024,
        [("4", "width"), ("4", "height")],
    )
    assert template.inputs["prompt"].required and not template.inputs["steps"].required


@pytest.mark.parametrize(
    ("change", "node", "field", "reason"),
    [
        ({"type": "integer", "places": [["99", "steps"]]}, "99", "steps", "no such node"),
        ({"type": "integer", "places": [["5", "stepz"]]}, "5", "stepz", "KSampler has no input"),
        ({"type": "string", "places": [["5", "model"]]}, "5", "model", "link of type MODEL"),
        ({"type": "string", "places": [["5", "steps"]]}, "5", "steps", "is INT"),
        ({"type": "number", "places": [["5", "steps"]]}, "5", "steps", "is INT"),
        ({"type": "integer", "places": [["5", "steps"]], "maximum": 20000}, "5", "steps",
         "maximum 20000 is over the 10000"),
        ({"type": "number", "places": [["5", "cfg"]], "minimum": -1}, "5", "cfg", "below the 0"),
        ({"type": "enum", "places": [["5", "sampler_name"]], "choices": ["euler", "magic"]},
         "5", "sampler_name", "'magic' is not one"),
        ({"type": "model", "places": [["1", "ckpt_name"]], "choices": ["other.ckpt"]},
         "1", "ckpt_name", "'other.ckpt' is not one"),
        ({"type": "string", "places": [["1", "ckpt_name"]]}, "1", "ckpt_name", "names a file"),
        ({"type": "model", "places": [["7", "image"]]}, "7", "image", "not a list"),
        ({"type": "audio", "places": [["7", "image"]]}, "7", "image", "takes image uploads"),
        ({"type": "image", "places": [["5", "steps"]]}, "5", "steps", "takes no uploaded file"),
        ({"type": "integer", "places": [["5", "steps"]], "default": 0}, "5", "steps",
         "below the minimum 1"),
        ({"type": "image", "places": [["7", "image"]], "default": {"url": "https://x/p.png"}},
         "7", "image", "cannot have a default"),
        ({"type": "boolean", "places": [["10", "value"]], "minimum": 1}, "10", "value",
         "apply to integer"),
        ({"type": "integer", "places": [["5", "seed"]]}, "5", "seed", "already set by input"),
    ],
)  # fmt: skip
def test_each_kind_of_bad_input_is_refused_naming_input_node_and_field(
    change: dict[str, Any], node: str, field: str, reason: str
) -> None:
    # Alone, except where the problem is another input owning the place.
    owner = {"seed": fx.INPUTS["seed"]} if "already" in reason else {}
    error = refused({**owner, "bad": change})
    problem = error.problems[0]
    assert (problem.input, problem.node_id, problem.field) == ("bad", node, field)
    assert reason in problem.reason
    assert f"input 'bad' node {node} field '{field}'" in error.message


def test_a_place_the_graph_links_is_refused() -> None:
    graph = fx.graph()
    graph["11"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "x"}}
    graph["2"]["inputs"]["text"] = ["11", 0]
    with pytest.raises(InvalidTemplate, match="input 'prompt' node 2 field 'text': is linked"):
        compile_(graph)


def test_bounds_across_places_are_their_intersection() -> None:
    graph = fx.graph()
    graph["11"] = {"class_type": "ImageBlur", "inputs": {"image": ["8", 0], "blur_radius": 3,
                                                         "sigma": 1.0}}  # fmt: skip
    inputs = fx.spec(steps={"type": "integer", "places": [["5", "steps"], ["11", "blur_radius"]]})
    template = compile_(graph, inputs)
    assert (template.inputs["steps"].minimum, template.inputs["steps"].maximum) == (1, 31)


def test_the_graph_gets_the_usual_workflow_node_and_file_checks() -> None:
    unknown = fx.graph()
    unknown["5"]["class_type"] = "KSamplerDeluxe"
    with pytest.raises(InvalidWorkflow, match="unknown node types: KSamplerDeluxe"):
        compile_(unknown, fx.spec(seed=None, steps=None, cfg=None, sampler=None))
    with pytest.raises(InvalidWorkflow, match=r"node 10 \(PrimitiveBoolean\) is not allowed"):
        compile_(None, None, NodePolicy(denied=frozenset({"PrimitiveBoolean"})))
    fixed_file = fx.graph()
    fixed_file["11"] = {"class_type": "LoadImage", "inputs": {"image": "../other/secret.png"}}
    with pytest.raises(InvalidWorkflow, match=r"node 11 \(LoadImage\) input 'image'"):
        compile_(fixed_file)
    fixed_model = fx.graph()
    fixed_model["1"]["inputs"]["ckpt_name"] = "not-shipped.safetensors"
    with pytest.raises(InvalidWorkflow, match="not one of this server's files"):
        compile_(fixed_model, fx.spec(model=None))


def test_json_schema_describes_every_input() -> None:
    schema = json_schema(compile_())
    assert schema["title"] == "portrait@3"
    assert schema["required"] == ["photo", "prompt"]
    props = schema["properties"]
    assert props["steps"] == {"type": "integer", "minimum": 1, "maximum": 50, "default": 20}
    assert props["seed"]["oneOf"][1] == {"const": "random"}
    assert props["model"]["enum"] == fx.CHECKPOINTS
    assert [one["required"] for one in props["photo"]["oneOf"]] == [
        ["url"],
        ["upload_id"],
        ["data"],
    ]
    assert props["prompt"]["description"] == "What to draw."
    assert schema["additionalProperties"] is False


# ---- runs ----------------------------------------------------------------------------


def test_a_run_writes_each_value_into_every_place() -> None:
    template = compile_()
    run = resolve(
        template,
        {
            "prompt": "a cat",
            "seed": 42,
            "steps": 30,
            "cfg": 5.5,
            "sampler": "dpmpp_2m",
            "model": "sdxl.safetensors",
            "photo": {"url": "https://cdn.example.com/u/face.JPG?sig=1"},
            "flag": False,
            "size": 768,
        },
    )
    nodes = run.graph
    assert nodes["2"]["inputs"]["text"] == "a cat"
    assert nodes["3"]["inputs"]["text"] == "blurry"  # the default
    ks = nodes["5"]["inputs"]
    assert (ks["seed"], ks["steps"], ks["cfg"], ks["sampler_name"]) == (42, 30, 5.5, "dpmpp_2m")
    assert nodes["1"]["inputs"]["ckpt_name"] == "sdxl.safetensors"
    assert nodes["7"]["inputs"]["image"] == "photo.jpg"
    assert run.media == [("photo.jpg", {"url": "https://cdn.example.com/u/face.JPG?sig=1"})]
    assert nodes["10"]["inputs"]["value"] is False
    assert (nodes["4"]["inputs"]["width"], nodes["4"]["inputs"]["height"]) == (768, 768)
    assert template.workflow["2"]["inputs"]["text"] == "a photo"  # the template is untouched


def test_a_random_seed_is_drawn_within_bounds_and_recorded() -> None:
    seen: list[tuple[int, int]] = []

    def draw(low: int, high: int) -> int:
        seen.append((low, high))
        return 1234

    run = resolve(compile_(), {"prompt": "x", "photo": {"url": "https://e.com/p"}}, draw)
    assert seen == [(0, 2**53 - 1)]
    assert run.graph["5"]["inputs"]["seed"] == 1234 and run.values["seed"] == 1234
    assert run.media == [("photo.png", {"url": "https://e.com/p"})]


def test_media_may_come_from_an_upload_or_inline_data_and_the_record_keeps_no_bytes() -> None:
    upload = "upl_" + "a" * 32
    run = resolve(compile_(), {"prompt": "x", "photo": {"upload_id": upload}})
    assert run.media == [("photo.png", {"upload_id": upload})]
    assert run.graph["7"]["inputs"]["image"] == "photo.png"
    run = resolve(compile_(), {"prompt": "x", "photo": {"data": "iVBORw0KGgo="}})
    assert run.media == [("photo.png", {"data": "iVBORw0KGgo="})]
    assert run.values["photo"] == {"data": "<12 base64 characters>"}


@pytest.mark.parametrize(
    ("values", "name", "reason"),
    [
        ({"prompt": 7}, "prompt", "must be a string"),
        ({"prompt": "x" * 10_001}, "prompt", "the limit is 10000"),
        ({"steps": 51}, "steps", "over the maximum 50"),
        ({"steps": 2.5}, "steps", "must be an integer"),
        ({"steps": True}, "steps", "must be an integer"),
        ({"cfg": "high"}, "cfg", "must be a number"),
        ({"cfg": 100.5}, "cfg", "over the maximum 100"),
        ({"seed": "lucky"}, "seed", 'an integer or "random"'),
        ({"seed": -1}, "seed", "below the minimum 0"),
        ({"sampler": "magic"}, "sampler", "must be one of"),
        ({"model": "../../etc/passwd"}, "model", "must be one of"),
        ({"flag": "yes"}, "flag", "true or false"),
        ({"photo": "https://e.com/p.png"}, "photo", '{"url"'),
        ({"photo": {"url": "https://e.com/p.png", "name": "x"}}, "photo", '{"url"'),
        ({"photo": {"upload_id": 7}}, "photo", '{"upload_id"'),
        ({"photo": {"path": "/etc/passwd"}}, "photo", '{"data"'),
        ({"size": 2048}, "size", "over the maximum 1024"),
        ({"colour": "red"}, "colour", "no such input"),
    ],
)
def test_each_bad_value_is_refused_naming_the_input(
    values: dict[str, Any], name: str, reason: str
) -> None:
    base: dict[str, Any] = {"prompt": "x", "photo": {"url": "https://e.com/p.png"}}
    with pytest.raises(InvalidInput) as caught:
        resolve(compile_(), {**base, **values})
    assert caught.value.input == name
    assert reason in caught.value.message
    assert caught.value.message.startswith(f"input '{name}'")


def test_a_missing_required_input_is_named() -> None:
    with pytest.raises(InvalidInput, match="input 'photo': is required"):
        resolve(compile_(), {"prompt": "x"})


def test_an_optional_input_without_default_keeps_the_graph_value() -> None:
    inputs = fx.spec(negative={"type": "string", "places": [["3", "text"]], "required": False})
    run = resolve(compile_(None, inputs), {"prompt": "x", "photo": {"url": "https://e.com/p"}})
    assert run.graph["3"]["inputs"]["text"] == "blurry"
    assert "negative" not in run.values
