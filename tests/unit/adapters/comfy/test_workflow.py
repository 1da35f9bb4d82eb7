"""Workflow checks and input binding (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.adapters.comfy.catalog import NodeCatalog
from app.adapters.comfy.workflow import Graph, bind_inputs, check_workflow, referenced_inputs
from app.core.errors import InvalidWorkflow
from tests.paths import FIXTURES


@pytest.fixture(scope="module")
def catalog() -> NodeCatalog:
    return NodeCatalog.from_object_info(json.loads((FIXTURES / "object_info.json").read_text()))


def graph(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    base.update(overrides)
    return base


def check(
    value: object,
    catalog: NodeCatalog | None = None,
    max_nodes: int = 100,
    max_bytes: int = 100_000,
) -> Graph:
    return check_workflow(value, catalog, max_nodes=max_nodes, max_bytes=max_bytes)


def test_valid_graph_is_returned(catalog):
    assert check(graph(), catalog) == graph()


@pytest.mark.parametrize("value", [[1, 2], "graph", None, 3])
def test_non_object_is_refused(value):
    with pytest.raises(InvalidWorkflow, match="must be a JSON object of node id -> node"):
        check(value)


def test_ui_format_is_named():
    ui = {
        "last_node_id": 3,
        "nodes": [{"id": 1, "type": "EmptyImage"}],
        "links": [],
        "version": 0.4,
    }

    with pytest.raises(InvalidWorkflow, match=r"UI format.*Save \(API Format\)"):
        check(ui)


def test_ui_format_under_workflow_key_is_named():
    with pytest.raises(InvalidWorkflow, match="UI format"):
        check({"workflow": {"nodes": [], "links": []}})


def test_request_body_instead_of_graph_is_named():
    with pytest.raises(InvalidWorkflow, match="not a request body with a 'prompt' key"):
        check({"prompt": graph(), "client_id": "x"})


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_at_submit(catalog, number):
    # A request body may carry them (Python's JSON reader takes them), but ComfyUI's
    # POST /prompt could not: they used to fail the job only at render.
    nodes = graph()
    nodes["1"]["inputs"]["color"] = number
    with pytest.raises(InvalidWorkflow, match="NaN and Infinity are not JSON numbers"):
        check(nodes, catalog)


def test_empty_graph_is_refused():
    with pytest.raises(InvalidWorkflow, match="no nodes"):
        check({})


def test_node_shape_problems_are_listed():
    bad = {
        "1": {"inputs": {}},
        "2": {"class_type": "X"},
        "3": "node",
        "4": {"class_type": "Y", "inputs": []},
    }

    with pytest.raises(InvalidWorkflow) as caught:
        check(bad)

    message = caught.value.message
    assert "node 1 has no class_type" in message
    assert "node 2 has no inputs object" in message
    assert "node 3 must be an object, not a string" in message
    assert "node 4 inputs must be an object, not an array" in message


def test_unknown_classes_are_listed_with_their_nodes(catalog):
    bad = graph(
        **{
            "4": {"class_type": "KSamplerX", "inputs": {}},
            "5": {"class_type": "KSamplerX", "inputs": {}},
            "6": {"class_type": "Foo", "inputs": {}},
        }
    )

    with pytest.raises(InvalidWorkflow) as caught:
        check(bad, catalog)

    assert "unknown node types: Foo (node 6), KSamplerX (node 4, 5)" in caught.value.message


def test_unknown_classes_pass_without_catalog():
    assert check(graph(**{"4": {"class_type": "Custom", "inputs": {}}}))


def test_link_to_missing_node(catalog):
    bad = graph(**{"3": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}}})

    with pytest.raises(
        InvalidWorkflow, match="node 3 input 'images' links to node 9, which does not exist"
    ):
        check(bad)


def test_link_to_missing_output_index_needs_catalog(catalog):
    bad = graph(**{"2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 1]}}})

    assert check(bad)  # structurally fine
    with pytest.raises(
        InvalidWorkflow, match=r"output 1 of node 1 \(EmptyImage\), which has 1 output$"
    ):
        check(bad, catalog)


@pytest.mark.parametrize("link", [["1"], ["1", 0, 0], [1, 0], ["1", "0"], ["1", True], ["1", 0.0]])
def test_malformed_links(link):
    bad = graph(**{"2": {"class_type": "ImageInvert", "inputs": {"image": link}}})

    with pytest.raises(InvalidWorkflow, match="is a list but not a link"):
        check(bad)


def test_cycle_is_refused():
    bad = graph(**{"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}})

    with pytest.raises(InvalidWorkflow, match="cycle: 1 -> 2 -> 1"):
        check(bad)


def test_self_link_is_a_cycle():
    bad = graph(**{"2": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}})

    with pytest.raises(InvalidWorkflow, match="cycle: 2 -> 2"):
        check(bad)


def test_no_output_node(catalog):
    no_output = graph()
    del no_output["3"]

    assert check(no_output)
    with pytest.raises(InvalidWorkflow, match="no output node"):
        check(no_output, catalog)


def test_size_limits():
    with pytest.raises(InvalidWorkflow, match="3 nodes; the limit is 2"):
        check(graph(), max_nodes=2)
    size = len(json.dumps(graph(), separators=(",", ":")))
    with pytest.raises(InvalidWorkflow, match=f"{size} bytes; the limit is {size - 1}"):
        check(graph(), max_bytes=size - 1)
    assert check(graph(), max_bytes=size, max_nodes=3)


def test_many_problems_are_capped():
    bad = {str(i): {"class_type": "X"} for i in range(20)}

    with pytest.raises(InvalidWorkflow, match=r"and 12 more problems$"):
        check(bad)


def test_bind_inputs_replaces_client_names_only():
    workflow: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "other.png"}},
        "3": {"class_type": "X", "inputs": {"a": ["1", 0], "b": 3, "c": "face.png"}},
    }

    bound = bind_inputs(workflow, {"face.png": "job-1/face.png"})

    assert bound["1"]["inputs"]["image"] == "job-1/face.png"
    assert bound["2"]["inputs"]["image"] == "other.png"
    assert bound["3"]["inputs"] == {"a": ["1", 0], "b": 3, "c": "job-1/face.png"}
    assert workflow["1"]["inputs"]["image"] == "face.png"  # the original is untouched


def test_referenced_inputs():
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "2": {"class_type": "X", "inputs": {"text": "hello"}},
    }

    assert referenced_inputs(workflow, ["face.png", "mask.png"]) == {"face.png"}
