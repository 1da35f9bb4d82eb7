"""Job events on the Modal backend (the emulator): the same log, the same stream."""

from __future__ import annotations

from app.clients.sse import ServerEvent, parse_events
from app.store.keys import STREAMS_DICT
from tests.integration.modal.conftest import World
from tests.integration.modal.test_modal_app_e2e import invert_request, settle


def events(world: World, job_id: str, after: int = 0) -> list[ServerEvent]:
    headers = {**world.headers(), "Last-Event-ID": str(after)}
    response = world.client.get(f"/v1/jobs/{job_id}/events", headers=headers)
    assert response.status_code == 200, response.text
    return list(parse_events(response.text.splitlines()))


def test_a_finished_job_streams_every_event_and_frees_its_place(world: World) -> None:
    job_id = world.submit(invert_request(world)).json()["id"]
    assert settle(world, job_id)["status"] == "completed"
    got = events(world, job_id)
    assert [e.id for e in got] == list(range(1, len(got) + 1))
    kinds = [e.type for e in got]
    assert kinds[0] == "queued" and kinds[-2:] == ["output", "completed"], kinds
    assert [e.data["stage"] for e in got if e.type == "started"] == ["fetch", "render", "upload"]
    assert "progress" in kinds
    resumed = events(world, job_id, after=got[2].id)
    assert [e.id for e in resumed] == [e.id for e in got[3:]]
    # Each stream gave its place back when it ended.
    assert list(world.deps.backend.kv(STREAMS_DICT).keys()) == []


def test_bad_last_event_id_is_400_and_another_users_job_404(world: World) -> None:
    job_id = world.submit(invert_request(world)).json()["id"]
    path = f"/v1/jobs/{job_id}/events"
    bad = world.client.get(path, headers={**world.headers(), "Last-Event-ID": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    assert world.client.get(path, headers=world.headers("mallory")).status_code == 404
    assert world.client.get(path).status_code == 401
