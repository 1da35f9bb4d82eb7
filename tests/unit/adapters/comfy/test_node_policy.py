"""The node policy: what reads or writes the host is refused unless the operator allows it."""

from __future__ import annotations

import json

import pytest

from app.adapters.comfy.catalog import NodeCatalog
from app.adapters.comfy.node_policy import NodePolicy, check_nodes
from app.core.config import Settings
from app.core.errors import InvalidWorkflow
from app.core.node_policy import DENIED_BY_DEFAULT
from tests.paths import FIXTURES

CATALOG = NodeCatalog.from_object_info(
    json.loads((FIXTURES / "object_info_file_nodes.json").read_text())
)


def one(class_type: str) -> dict[str, object]:
    return {"7": {"class_type": class_type, "inputs": {}}}


@pytest.mark.parametrize(
    "class_type",
    [
        "LoadImageSetFromFolderNode",
        "LoadImageTextSetFromFolderNode",
        "LoadImageOutput",
        "WebcamCapture",
        "RegexMatch",
        "RegexExtract",
        "RegexReplace",
        "CheckpointSave",
        "TrainLoraNode",
    ],
)
def test_the_default_policy_refuses_what_reads_or_writes_the_host(class_type: str) -> None:
    policy = NodePolicy.from_settings(Settings())
    with pytest.raises(InvalidWorkflow, match=rf"node 7 \({class_type}\) is not allowed: it "):
        check_nodes(one(class_type), policy, CATALOG)
    with pytest.raises(InvalidWorkflow):
        check_nodes(one(class_type), policy, None)  # no catalog needed


def test_every_default_denial_has_a_reason() -> None:
    assert Settings().node_denylist == list(DENIED_BY_DEFAULT)
    assert all(reason.startswith("it ") for reason in DENIED_BY_DEFAULT.values())


def test_ordinary_nodes_pass() -> None:
    policy = NodePolicy.from_settings(Settings())
    for class_type in ("LoadImage", "SaveImage", "EmptyImage", "PrimitiveString", "SaveVideo"):
        check_nodes(one(class_type), policy, CATALOG)


def test_the_operator_allow_list_overrides_the_deny_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_SAAS_NODE_ALLOWLIST", "RegexMatch, TrainLoraNode")
    policy = NodePolicy.from_settings(Settings())
    check_nodes(one("RegexMatch"), policy, CATALOG)
    check_nodes(one("TrainLoraNode"), policy, CATALOG)
    with pytest.raises(InvalidWorkflow, match="RegexReplace"):
        check_nodes(one("RegexReplace"), policy, CATALOG)


def test_an_operator_deny_list_and_allow_list_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_SAAS_NODE_DENYLIST", "MyShellNode")
    policy = NodePolicy.from_settings(Settings())
    with pytest.raises(InvalidWorkflow, match="operator refuses it"):
        check_nodes(one("MyShellNode"), policy, None)
    check_nodes(one("RegexMatch"), policy, None)  # the operator replaced the default list

    strict = NodePolicy(allowed=frozenset({"LoadImage", "SaveImage"}), allowlist_only=True)
    check_nodes(one("SaveImage"), strict, None)
    with pytest.raises(InvalidWorkflow, match="allows only the node types its operator listed"):
        check_nodes(one("EmptyImage"), strict, None)


def test_api_nodes_are_refused_unless_allowed() -> None:
    assert CATALOG.get("KlingTextToVideoNode").api_node  # type: ignore[union-attr]
    with pytest.raises(InvalidWorkflow, match="paid third-party service"):
        check_nodes(one("KlingTextToVideoNode"), NodePolicy(), CATALOG)
    check_nodes(one("KlingTextToVideoNode"), NodePolicy(allow_api_nodes=True), CATALOG)


def test_every_refused_node_is_named() -> None:
    graph = {**one("RegexMatch"), "8": {"class_type": "LoadImageOutput", "inputs": {}}}
    with pytest.raises(InvalidWorkflow) as info:
        check_nodes(graph, NodePolicy(), CATALOG)
    assert "node 7 (RegexMatch)" in info.value.message
    assert "node 8 (LoadImageOutput)" in info.value.message
