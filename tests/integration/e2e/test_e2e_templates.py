"""A template job end to end: registered against the live node catalog, run with typed
inputs, rendered by the ComfyUI double or, with COMFYUI_URL set, by a real ComfyUI."""

from __future__ import annotations

import time

from PIL import Image

from app.adapters.storage.local import LocalStore
from app.api.submissions import parse_submission, submit
from app.core.models import JobStatus
from app.core.templates import WorkflowCreate
from app.engine import templates
from app.engine.deps import Deps
from app.stages.intake import node_catalog
from tests.integration.e2e.test_e2e_local import (
    TERMINAL,
    comfy,
    pipeline,
    png,
    site,
    wait_for,
)
from tests.support.http_servers import Site

__all__ = ["comfy", "pipeline", "site"]  # fixtures shared with the raw-graph e2e tests


def test_a_template_job_runs_end_to_end(pipeline: Deps, site: Site) -> None:
    deps = pipeline
    tenant = deps.tenants.create("acme").tenant
    deps.tenants.update("acme", templates_only=True)
    tenant = deps.tenants.resolve("acme")
    site.files["/in.png"] = (png((10, 200, 30), size=(16, 12)), "image/png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "nearest-exact",
                "width": 8,
                "height": 8,
                "crop": "disabled",
            },
        },
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "t"}},
    }
    spec = {
        "photo": {"type": "image", "places": [["1", "image"]]},
        "method": {"type": "enum", "places": [["2", "upscale_method"]], "default": "bilinear"},
        "width": {"type": "integer", "places": [["2", "width"]], "default": 8, "maximum": 64},
        "height": {"type": "integer", "places": [["2", "height"]], "default": 8, "maximum": 64},
        "prefix": {"type": "string", "places": [["4", "filename_prefix"]], "default": "tpl"},
    }
    body = WorkflowCreate(name="thumb", workflow=graph, inputs=spec)
    template = templates.register(deps, tenant, body, node_catalog(deps))
    assert template.inputs["method"].choices is not None  # from the live catalog
    assert "nearest-exact" in template.inputs["method"].choices
    run = parse_submission(
        {
            "workflow_id": "thumb@1",
            "inputs": {
                "photo": {"url": site.url("/in.png")},
                "method": "nearest-exact",
                "width": 24,
                "height": 10,
                "prefix": f"tpl{time.time_ns()}",
            },
        }
    )
    job = submit(deps, tenant, "user-1", run, None).job
    # Deleting the template while the job is queued does not break it
    deps.templates.delete_all(tenant.id, "thumb")
    wait_for(deps, job.id, TERMINAL)
    done = deps.jobs.get(job.id)
    assert done.status is JobStatus.COMPLETED, done.error
    assert done.template is not None and done.template.id == "thumb@1"
    store = deps.objects
    assert isinstance(store, LocalStore)
    image = Image.open(store.path_for(done.outputs[0].key)).convert("RGB")
    assert image.size == (24, 10)
    r, g, b = image.getpixel((0, 0))  # type: ignore[misc]
    assert abs(r - 245) <= 1 and abs(g - 55) <= 1 and abs(b - 225) <= 1
