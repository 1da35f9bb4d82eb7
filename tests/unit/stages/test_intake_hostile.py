"""Intake refuses hostile workflows at submit, before anything is fetched or rendered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.adapters.comfy import catalog as node_catalogs
from app.core.config import Settings
from app.core.errors import InvalidWorkflow
from app.core.schemas import JobRequest
from app.engine.deps import Deps
from app.stages.intake import check_request
from app.store.backends.memory import MemoryBackend
from tests.paths import FIXTURES
from tests.state_helpers import FakeClock

OBJECT_INFO = json.loads((FIXTURES / "object_info_file_nodes.json").read_text())


@pytest.fixture
def deps(tmp_path: Path) -> Deps:
    clock = FakeClock()
    deps = Deps(settings=Settings(data_dir=tmp_path), backend=MemoryBackend(), clock=clock)
    node_catalogs.publish(deps.backend.kv(node_catalogs.CATALOG_DICT), OBJECT_INFO, clock())
    return deps


def request(**load: Any) -> JobRequest:
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "face.png", **load}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    inputs = [{"name": "face.png", "url": "https://example.com/face.png"}]
    return JobRequest.model_validate({"workflow": workflow, "inputs": inputs})


def test_a_workflow_naming_its_own_input_is_accepted(deps: Deps) -> None:
    check_request(request(), deps)


@pytest.mark.parametrize(
    "image", ["job_0abc/secret-a.png", "../output/job_a/x.png", "/etc/passwd", "x.png [output]"]
)
def test_a_workflow_naming_other_files_is_refused(deps: Deps, image: str) -> None:
    with pytest.raises(InvalidWorkflow, match=r"node 1 \(LoadImage\) input 'image'"):
        check_request(request(image=image), deps)


def test_a_denied_node_is_refused_at_submit(deps: Deps) -> None:
    body = request().model_dump()
    body["workflow"]["3"] = {
        "class_type": "RegexMatch",
        "inputs": {"string": "aaaa!", "regex_pattern": "^(a+)+$"},
    }
    with pytest.raises(InvalidWorkflow, match=r"node 3 \(RegexMatch\) is not allowed"):
        check_request(JobRequest.model_validate(body), deps)
