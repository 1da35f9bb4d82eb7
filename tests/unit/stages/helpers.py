"""Jobs for the stage tests: admitted with inputs, or walked to a given stage."""

from __future__ import annotations

from typing import Any

from app.core.models import InputSpec, Job, Stage
from app.engine.pipeline import enqueue
from app.store.jobs import Limits
from tests.state_helpers import new_job
from tests.unit.stages.fakes import World, png_bytes

PHOTO_URL = "https://images.example.com/face.png"
HOOK_URL = "https://hooks.example.com/done"

#: Loads the client's input `face.png`, saves one image.
WORKFLOW: dict[str, object] = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "../t"}},
}


def admit(world: World, job_id: str = "j1", **overrides: Any) -> Job:
    """Create a job with one input (`face.png`) and queue its fetch."""
    values: dict[str, Any] = {
        "workflow": WORKFLOW,
        "inputs": [InputSpec(name="face.png", url=PHOTO_URL)],
    }
    values.update(overrides)
    job = world.deps.jobs.create(new_job(**values), job_id, Limits()).job
    enqueue(world.deps, job_id, Stage.FETCH)
    return job


def fetched(world: World, job_id: str = "j1", **overrides: Any) -> Job:
    """A job whose fetch is done (its input in the scratch folder): render is queued."""
    admit(world, job_id, **overrides)
    world.http.sites.setdefault(PHOTO_URL, png_bytes())
    assert world.step(Stage.FETCH) == 1
    assert world.queued(Stage.RENDER) == 1
    return world.job(job_id)


def parked(world: World) -> list[str]:
    """The keys of parked (delayed) messages."""
    from app.store.keys import DELAYED_DICT

    return sorted(world.deps.backend.kv(DELAYED_DICT).keys())
