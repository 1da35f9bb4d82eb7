"""Two tenants on one renderer: B can neither read nor write anything of A's.

The running local pipeline (real worker processes, 2 render workers, SQLite) on the
ComfyUI double and, with COMFYUI_URL (marked `comfyui`), on a real ComfyUI. Tenant A's
job renders while tenant B tries every read and write of issue #11: naming A's input or
outputs through every loader (and every file-type input of the real catalog capture),
absolute paths, `../`, annotations, folder-reading nodes, a linked `filename_prefix` into
A's folder, reusing A's job id on the intake queue, and Alice's Idempotency-Key as Bob.
Each is refused at submit or yields only B's own files; afterwards nothing either job
wrote is left on the ComfyUI side. `comfyui_base_dir` is left unset (the local default):
render finds ComfyUI's folders from what ComfyUI reports about itself.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.adapters.comfy.catalog import NodeCatalog
from app.adapters.comfy.job_files import remove_later
from app.adapters.storage.local import LocalStore
from app.core.config import Settings
from app.core.errors import InvalidRequest
from app.core.ids import new_job_id
from app.core.models import Job, JobStatus, Stage
from app.core.schemas import JobRequest
from app.deploy.local.runner import Pipeline
from app.engine.deps import Deps, build_deps
from app.stages.intake import admit
from app.store.tenants import Tenant
from tests.comfy_double import ComfyDouble
from tests.support.http_servers import Site, serve
from tests.support.waiting import wait_until

WAIT_S = 120.0
FIXTURES = Path(__file__).parents[2] / "fixtures" / "comfyui"
#: The real catalog captures: the double's nodes and every file-type node of ComfyUI 0.3.64.
CAPTURES = ("object_info.json", "object_info_file_nodes.json")
TERMINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
SECRET = (201, 13, 77)


def png(color: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


@dataclass
class World:
    deps: Deps
    site: Site
    base: Path  # ComfyUI's base folder, for the "nothing survives" checks
    alice: Tenant
    bob: Tenant
    bob_key: str

    def submit(self, tenant: Tenant, user: str, workflow: dict[str, Any], **extra: Any) -> Job:
        return admit(self.deps, tenant, user, JobRequest(workflow=workflow, **extra)).job

    def wait(self, job_id: str) -> Job:
        wait_until(
            lambda: self.deps.jobs.get(job_id).status in TERMINAL,
            timeout_s=WAIT_S,
            interval_s=0.1,
            what=f"job {job_id} terminal",
        )
        return self.deps.jobs.get(job_id)

    def output_bytes(self, job: Job) -> list[bytes]:
        store = self.deps.objects
        assert isinstance(store, LocalStore)
        return [store.path_for(o.key).read_bytes() for o in job.outputs]


@pytest.fixture(params=["double", pytest.param("real", marks=pytest.mark.comfyui)])
def comfy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(url, base folder) of the shared renderer."""
    if request.param == "real":
        url, base = os.environ.get("COMFYUI_URL", ""), os.environ.get("COMFYUI_BASE_DIR", "")
        if not url or not base:
            pytest.skip("COMFYUI_URL and COMFYUI_BASE_DIR are not set; see docs/comfyui.md")
        yield url.rstrip("/"), Path(base)
        return
    double = ComfyDouble(tmp_path / "comfy")
    double.node_delay_s = {"ImageBlur": 0.4}  # A's job renders while B's run beside it
    double.object_info = capture()  # so intake checks against the real catalog's file inputs
    double.start()
    try:
        yield double.url, tmp_path / "comfy"
    finally:
        double.stop()


@pytest.fixture
def world(tmp_path: Path, comfy: tuple[str, Path]) -> Iterator[World]:
    with serve("127.0.0.2") as site:
        settings = Settings(
            data_dir=tmp_path / "data",
            comfyui_url=comfy[0],
            comfyui_base_dir="",  # the local default: render finds ComfyUI's folders itself
            local_render_workers=2,
            fetch_allow_http=True,
            fetch_allow_cidrs=["127.0.0.2/32"],
            fetch_allowed_ports=[site.port],
            public_url="http://127.0.0.1:9",
        )
        deps = build_deps(settings)
        runner = Pipeline(settings)
        runner.start()
        beta = deps.tenants.create("beta")
        try:
            yield World(
                deps, site, comfy[1], deps.tenants.create("acme").tenant, beta.tenant, beta.api_key
            )
        finally:
            runner.shutdown(grace_s=10)


def slow_secret_workflow(prefix: str) -> dict[str, Any]:
    """A's job: loads its secret input, blurs it for a while, saves it."""
    graph: dict[str, Any] = {"1": {"class_type": "LoadImage", "inputs": {"image": "secret-a.png"}}}
    previous = "1"
    for node in ("10", "11", "12", "13"):
        graph[node] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], "blur_radius": 1, "sigma": 0.5},
        }
        previous = node
    graph["20"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": [previous, 0],
            "upscale_method": "nearest-exact",
            "width": 1400,
            "height": 1400,
            "crop": "disabled",
        },
    }
    for node in ("21", "22", "23"):
        graph[node] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [str(int(node) - 1), 0], "blur_radius": 15, "sigma": 1.0},
        }
    graph["30"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["23", 0], "filename_prefix": prefix},
    }
    return graph


def loader(class_type: str, name: str, field: str = "image") -> dict[str, Any]:
    inputs: dict[str, Any] = {field: name}
    if class_type == "LoadImageMask":
        inputs["channel"] = "alpha"
    return {
        "1": {"class_type": class_type, "inputs": inputs},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


def own_input(world: World) -> list[dict[str, str]]:
    world.site.files["/b.png"] = (png((1, 2, 3)), "image/png")
    return [{"name": "mine.png", "url": world.site.url("/b.png")}]


def refused(world: World, workflow: dict[str, Any], *, inputs: bool = False) -> str:
    extra = {"inputs": own_input(world)} if inputs else {}
    with pytest.raises(InvalidRequest) as info:
        world.submit(world.bob, "bob", workflow, **extra)
    return info.value.message


def hostile_names(job_id: str, saved: str, store_path: Path) -> list[str]:
    """Every way B has been seen to name A's files or the host's."""
    return [
        f"{job_id}/secret-a.png",
        f"{job_id}/{saved} [output]",
        "secret-a.png [input]",
        f"../output/{job_id}/{saved}",
        f"../input/{job_id}/secret-a.png",
        str(store_path),
        "/etc/passwd",
        "~/.ssh/id_rsa",
        "secret-a.png\n",
        "C:\\Windows\\win.ini",
    ]


def test_tenant_b_reaches_nothing_of_tenant_a(world: World) -> None:
    base = world.base
    world.deps.comfy.object_info()  # ComfyUI makes its own folders (input/3d) on first ask
    before = {kind: set(os.listdir(base / kind)) for kind in ("input", "output", "temp")}
    # Given A's job rendering its secret input, with an idempotency key
    world.site.files["/secret.png"] = (png(SECRET), "image/png")
    key_request = JobRequest(
        workflow=slow_secret_workflow(f"a{time.time_ns()}"),
        inputs=[{"name": "secret-a.png", "url": world.site.url("/secret.png")}],
    )
    a_job = admit(world.deps, world.alice, "alice", key_request, idempotency_key="order-1").job
    wait_until(
        lambda: (base / "input" / a_job.id / "secret-a.png").exists(),
        timeout_s=WAIT_S,
        interval_s=0.05,
        what="A's input on the renderer",
    )

    # When B names A's files through every loader while A renders: refused at submit
    saved = "a_00001_.png"
    store_path = world.deps.settings.data_dir / "objects" / "outputs" / a_job.id / saved
    for class_type in ("LoadImage", "LoadImageMask", "LoadImageOutput", "WebcamCapture"):
        for name in hostile_names(a_job.id, saved, store_path):
            message = refused(world, loader(class_type, name), inputs=True)
            assert class_type in message, (class_type, name, message)
    folder = {
        "1": {
            "class_type": "LoadImageSetFromFolderNode",
            "inputs": {"folder": a_job.id, "resize_method": "None"},
        },
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    assert "LoadImageSetFromFolderNode" in refused(world, folder)

    # And B's linked filename_prefix into A's folder and the output root runs beside A's
    # job (2 render workers) but writes only into B's own folder
    linked = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": f"{a_job.id}/stolen"}},
        "2": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": time.time_ns() % 9999},
        },
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": ["1", 0]},
        },
        "4": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "../../x"},
        },
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    b_linked = world.submit(world.bob, "bob", linked)
    # And B's intake-queue message reusing A's id, and Bob sending Alice's key
    world.deps.queue(Stage.INTAKE).put(
        json.dumps(
            {
                "job_id": a_job.id,
                "api_key": world.bob_key,
                "user_id": "bob",
                "request": {"workflow": linked},
            }
        )
    )
    b_replay = admit(world.deps, world.alice, "bob", key_request, idempotency_key="order-1")

    # Then A's job is A's and completes with A's secret, rendered
    a_done = world.wait(a_job.id)
    assert a_done.status is JobStatus.COMPLETED, a_done.error
    assert (a_done.tenant_id, a_done.user_id) == (world.alice.id, "alice")
    assert len(a_done.outputs) == 1
    # And Bob's replay of Alice's key is a job of Bob's own, never Alice's
    assert not b_replay.replayed and b_replay.job.id != a_job.id
    assert b_replay.job.user_id == "bob"
    world.wait(b_replay.job.id)
    # And B's linked-prefix job delivered only what B rendered, from B's folder
    b_done = world.wait(b_linked.id)
    assert b_done.status is JobStatus.COMPLETED, b_done.error
    a_bytes = set(world.output_bytes(a_done))
    assert b_done.outputs and not a_bytes & set(world.output_bytes(b_done))
    assert world.deps.jobs.get(a_job.id).metadata == {}  # the queued reuse changed nothing
    # And nothing either job wrote is left on the renderer
    jobs = (a_job.id, b_linked.id, b_replay.job.id)
    remove_later.settle()  # wiped folders are parked at once and deleted on a thread
    for kind in ("input", "output", "temp"):
        for job_id in jobs:
            assert not (base / kind / job_id).exists(), (kind, job_id)
        new = set(os.listdir(base / kind)) - before[kind]
        assert not new, (kind, new)


def capture() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in CAPTURES:
        merged.update(json.loads((FIXTURES / name).read_text()))
    return merged


def catalog_file_inputs() -> list[tuple[str, str]]:
    catalog = NodeCatalog.from_object_info(capture())
    found = []
    for class_type in catalog:
        spec = catalog.get(class_type)
        assert spec is not None
        found += [(class_type, name) for name in spec.file_inputs]
    return sorted(found)


def test_the_capture_has_file_inputs_to_sweep() -> None:
    inputs = catalog_file_inputs()
    assert ("LoadImage", "image") in inputs and ("CheckpointLoaderSimple", "ckpt_name") in inputs
    assert len(inputs) > 20


def test_every_file_input_of_the_catalog_refuses_another_jobs_file(world: World) -> None:
    # Given a job id of A's, as B could have learned it
    a_id = new_job_id()
    catalog = NodeCatalog.from_object_info(capture())
    for class_type, name in catalog_file_inputs():
        for value in (f"{a_id}/secret-a.png", f"../output/{a_id}/a_00001_.png", "/etc/passwd"):
            workflow: dict[str, Any] = {"1": {"class_type": class_type, "inputs": {name: value}}}
            if not catalog.is_output(class_type) and catalog.output_count(class_type):
                workflow["2"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}
            message = refused(world, workflow, inputs=True)
            # refused for the file name (naming node and input), for the node itself
            # (denied by policy), or because this server does not have the node
            assert class_type in message, (class_type, name, message)
            assert name in message or "not allowed" in message or "unknown node types" in message, (
                class_type,
                name,
                message,
            )
