"""The one stage shape: every stage a function of (subject, deps), run by the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

import app.stages
from app.core.models import Job, JobStatus, Stage
from app.engine.deps import Deps
from app.engine.pipeline import Later, enqueue, process_message, release_due
from app.stages import fetch, notify, render, stage_functions, upload
from app.store.jobs import Limits
from tests.state_helpers import new_job
from tests.unit.stages.fakes import World, make_world
from tests.unit.stages.helpers import parked


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def test_stage_messages_map_to_the_four_job_stages() -> None:
    assert stage_functions() == {
        Stage.FETCH: fetch.run,
        Stage.RENDER: render.run,
        Stage.UPLOAD: upload.run,
        Stage.NOTIFY: notify.run,
    }


def test_a_work_stage_may_answer_later_and_runs_again_then(world: World) -> None:
    world.deps.jobs.create(new_job(), "j1", Limits())
    enqueue(world.deps, "j1", Stage.FETCH)
    answers: list[Job | Later] = [Later(world.clock.now + 30)]

    def fetch_when_ready(job: Job, deps: Deps) -> Job | Later:
        return answers.pop() if answers else job

    stages = {**stage_functions(), Stage.FETCH: fetch_when_ready}
    process_message(world.deps.queue(Stage.FETCH).get() or "", world.deps, stages)
    job = world.job("j1")
    assert job.status is JobStatus.RUNNING and job.lease_until is None
    assert [key.split(":", 1)[1] for key in parked(world)] == ["j1:fetch:0:1"]
    world.clock.advance(29)
    assert release_due(world.deps) == 0
    world.clock.advance(1)
    assert release_due(world.deps) == 1
    process_message(world.deps.queue(Stage.FETCH).get() or "", world.deps, stages)
    assert world.queued(Stage.RENDER) == 1


def test_no_stage_reaches_past_the_stores_or_branches_on_the_backend() -> None:
    folder = Path(app.stages.__file__).parent
    for module in sorted(folder.glob("*.py")):
        source = module.read_text()
        assert "deps.backend" not in source, module.name
        assert "settings.backend" not in source, module.name
        assert ".kv(" not in source, module.name


def test_drain_hands_each_message_to_its_stage(world: World) -> None:
    world.deps.jobs.create(new_job(), "j1", Limits())
    world.deps.jobs.cancel("j1")
    enqueue(world.deps, "j1", Stage.FETCH)
    assert app.stages.drain(Stage.FETCH, world.deps) == 1
    assert world.http.downloads == []
