"""The file-name policy: a workflow may name only the job's own inputs and the server's models.

The catalog is built from real `/object_info` entries of ComfyUI 0.3.64 (every node class
of the full capture that has a file-name input, plus a few others).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.adapters.comfy.catalog import NodeCatalog
from app.adapters.comfy.file_policy import check_file_names, file_name_problem, scope_prefixes
from app.core.errors import InvalidWorkflow
from tests.paths import FIXTURES

OBJECT_INFO = json.loads((FIXTURES / "object_info_file_nodes.json").read_text())
CATALOG = NodeCatalog.from_object_info(OBJECT_INFO)
INPUTS = ["face.png", "voice.wav"]

#: Every (class, input) of the capture that names a file, and whether it is an upload.
FILE_INPUTS = sorted(
    (name, key, spec.upload)
    for name in CATALOG
    if (node := CATALOG.get(name)) is not None
    for key, spec in node.file_inputs.items()
)
UPLOADS = [(name, key) for name, key, upload in FILE_INPUTS if upload]


def graph(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {
        "1": {"class_type": class_type, "inputs": inputs},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def refused(g: dict[str, Any], catalog: NodeCatalog | None = CATALOG) -> str:
    with pytest.raises(InvalidWorkflow) as info:
        check_file_names(g, catalog, INPUTS)
    return info.value.message


def test_the_capture_has_the_upload_inputs_the_issue_names() -> None:
    assert set(UPLOADS) >= {
        ("LoadImage", "image"),
        ("LoadImageMask", "image"),
        ("LoadImageOutput", "image"),
        ("LoadAudio", "audio"),
        ("LoadVideo", "file"),
        ("Load3D", "model_file"),
    }
    assert ("CheckpointLoaderSimple", "ckpt_name", False) in FILE_INPUTS
    assert ("LoadLatent", "latent", False) in FILE_INPUTS
    select = CATALOG.get("KSamplerSelect")
    assert select is None or not select.file_inputs


def test_a_job_input_is_accepted_everywhere() -> None:
    for name, key, _ in FILE_INPUTS:
        check_file_names(graph(name, **{key: "face.png"}), CATALOG, INPUTS)
    check_file_names(graph("LoadImage", image="face.png"), None, INPUTS)


HOSTILE = [
    ("job_0123456789abcdef0123456789abcdef/secret-a.png", "sub-folder"),
    ("../output/job_0123/secret.png", "'..'"),
    ("/etc/passwd", "absolute path"),
    ("/work/data/signing.key", "absolute path"),
    ("~/x.png", "absolute path"),
    ("C:/Windows/x.png", "absolute path"),
    ("..\\x.png", "backslash"),
    ("secret.png [output]", "annotation"),
    ("face.png [input]", "annotation"),
    ("x.png [temp]", "annotation"),
    ("face.png\n", "control character"),
    ("probe_upload.png", "not one of this job's inputs"),
    ("", "empty"),
]


@pytest.mark.parametrize(("class_type", "key"), UPLOADS)
@pytest.mark.parametrize(("value", "why"), HOSTILE)
def test_every_upload_input_refuses_what_is_not_the_jobs_own(
    class_type: str, key: str, value: str, why: str
) -> None:
    message = refused(graph(class_type, **{key: value}))
    assert f"node 1 ({class_type}) input '{key}'" in message
    assert why in message


@pytest.mark.parametrize(("class_type", "key"), UPLOADS)
def test_a_file_name_given_as_a_link_is_refused(class_type: str, key: str) -> None:
    g = graph(class_type, **{key: ["p", 0]})
    g["p"] = {"class_type": "PrimitiveString", "inputs": {"value": "job_a/secret.png"}}
    assert "not a link" in refused(g)


def test_the_core_loaders_are_checked_without_a_catalog() -> None:
    assert "sub-folder" in refused(graph("LoadImage", image="job_a/x.png"), None)
    assert "annotation" in refused(graph("LoadImageOutput", image="x.png [output]"), None)
    assert "absolute" in refused(graph("WebcamCapture", image="/etc/hosts"), None)


def test_model_lists_accept_the_servers_names_only() -> None:
    catalog = NodeCatalog.from_object_info(
        {
            "CheckpointLoaderSimple": {
                "input": {"required": {"ckpt_name": [["sdxl/base.safetensors", "v15.ckpt"], {}]}},
                "output": ["MODEL", "CLIP", "VAE"],
            }
        }
    )
    ok = graph("CheckpointLoaderSimple", ckpt_name="sdxl/base.safetensors")
    check_file_names(ok, catalog, INPUTS)
    message = refused(graph("CheckpointLoaderSimple", ckpt_name="other.safetensors"), catalog)
    assert "'other.safetensors' is not one of this server's files" in message
    message = refused(graph("CheckpointLoaderSimple", ckpt_name="../../x.ckpt"), catalog)
    assert "'..'" in message


def test_enumerations_are_not_file_names() -> None:
    catalog = NodeCatalog.from_object_info(
        {"KSamplerSelect": {"input": {"required": {"sampler_name": [["euler", "dpmpp_2m"]]}}}}
    )
    check_file_names(graph("KSamplerSelect", sampler_name="/not/checked"), catalog, INPUTS)


def test_problems_are_listed_per_node() -> None:
    g: dict[str, dict[str, Any]] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "/etc/passwd"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": "a/b.png", "channel": "alpha"}},
    }
    message = refused(g)
    assert "node 1 (LoadImage) input 'image' is an absolute path" in message
    assert "node 2 (LoadImageMask) input 'image' names a sub-folder" in message


@pytest.mark.parametrize(
    "value",
    ["a.png", "sdxl/base.safetensors", "x..y.png", "name with space.png"],
)
def test_plain_names_have_no_problem(value: str) -> None:
    assert file_name_problem(value) is None


# --- outputs: every prefix under the job's folder ---------------------------------------


def test_every_prefix_is_scoped_literal_or_link() -> None:
    g: dict[str, dict[str, Any]] = {
        "p": {"class_type": "PrimitiveString", "inputs": {"value": "job_other/steal"}},
        "1": {
            "class_type": "SaveImage",
            "inputs": {"images": ["x", 0], "filename_prefix": ["p", 0]},
        },
        "2": {"class_type": "SaveAnimatedWEBP", "inputs": {"filename_prefix": "../../../root"}},
        "3": {"class_type": "SaveAudio", "inputs": {"filename_prefix": "a\\b\\..\\c"}},
        "4": {"class_type": "SaveVideo", "inputs": {"filename_prefix": "/abs/..hidden"}},
        "5": {"class_type": "SaveImage", "inputs": {"filename_prefix": ""}},
        "6": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x\n[output]"}},
        "7": {"class_type": "SaveImage", "inputs": {"filename_prefix": 42}},
    }
    scoped = scope_prefixes(g, "job_1", "tok")
    prefixes = {k: v["inputs"].get("filename_prefix") for k, v in scoped.items()}
    assert prefixes == {
        "p": None,
        "1": "job_1/tok-output",
        "2": "job_1/tok-root",
        "3": "job_1/tok-c",
        "4": "job_1/tok-_hidden",
        "5": "job_1/tok-output",
        "6": "job_1/tok-x_output_",
        "7": "job_1/tok-output",
    }
    assert g["1"]["inputs"]["filename_prefix"] == ["p", 0]  # the input graph is untouched
    for value in prefixes.values():
        assert value is None or (value.count("/") == 1 and ".." not in value)


def test_render_scopes_outputs_through_the_policy() -> None:
    from app.stages.render import scope_outputs

    g = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": ["p", 0]}}}
    assert scope_outputs(g, "job_2", "t")["1"]["inputs"]["filename_prefix"] == "job_2/t-output"
