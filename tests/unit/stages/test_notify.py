"""The notify stage in process: signed webhooks to a fake receiver, retries and dead letters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from app.adapters.webhooks.delivery import PostResponse
from app.core.config import Settings
from app.core.errors import DeliveryFailed
from app.core.models import Job, JobStatus, Stage
from app.deploy.local.runner import FAIL_STALE_INTERVAL_S
from app.engine.maintenance import fail_stale
from app.engine.pipeline import after_terminal, enqueue, release_due
from app.stages import notify
from app.store.jobs import Limits
from tests.state_helpers import new_job
from tests.unit.stages.fakes import Post, World, make_world
from tests.unit.stages.helpers import HOOK_URL, parked


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, webhook_retry_schedule_s=[5, 60], webhook_timeout_s=3)


def ended(
    world: World, status: JobStatus = JobStatus.COMPLETED, job_id: str = "j1"
) -> tuple[Job, str]:
    """A job of a fresh tenant that has just ended with a webhook; returns it and the secret."""
    created = world.deps.tenants.create(f"acme-{job_id}")
    world.deps.jobs.create(
        new_job(tenant=created.tenant.id, webhook_url=HOOK_URL), job_id, Limits()
    )
    world.clock.advance(1)
    world.deps.jobs.finish(job_id, status)
    job = world.job(job_id)
    after_terminal(world.deps, job)
    assert world.queued(Stage.NOTIFY) == 1
    return job, created.webhook_secret


def verify(post: Post, secret: str) -> dict[str, object]:
    """Check the Standard Webhooks signature by hand (no wall-clock tolerance involved)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (
        f"{post.headers['webhook-id']}.{post.headers['webhook-timestamp']}.".encode() + post.body
    )
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{expected}" in post.headers["webhook-signature"].split(" ")
    payload: dict[str, object] = json.loads(post.body)
    return payload


def test_a_delivered_webhook_is_signed_logged_and_settled(world: World) -> None:
    _, secret = ended(world)
    world.http.answers = [PostResponse(204)]
    world.step(Stage.NOTIFY)
    (post,) = world.http.posts
    assert (post.url, post.timeout_s) == (HOOK_URL, 3)
    payload = verify(post, secret)
    assert payload["type"] == "job.completed"
    assert payload["data"] == {"job_id": "j1", "status": "completed", "outputs": []}
    assert post.headers["webhook-timestamp"] == str(int(world.clock.now))
    delivery = world.deps.deliveries.get("j1")
    assert delivery is not None and delivery.state == "delivered"
    assert delivery.msg_id == post.headers["webhook-id"]
    assert [a.status_code for a in delivery.attempts] == [204]
    assert not world.deps.deliveries.pending.contains("j1")
    assert parked(world) == []


def test_a_failed_job_says_why(world: World) -> None:
    ended(world, JobStatus.FAILED)
    world.http.answers = [PostResponse(200)]
    world.step(Stage.NOTIFY)
    payload = json.loads(world.http.posts[0].body)
    assert payload["type"] == "job.failed"


def test_a_retry_is_parked_then_sent_with_the_same_id_and_body(world: World) -> None:
    _, secret = ended(world)
    world.http.answers = [
        PostResponse(503),
        DeliveryFailed("connection refused"),
        PostResponse(200),
    ]
    world.step(Stage.NOTIFY)
    delivery = world.deps.deliveries.get("j1")
    assert delivery is not None and delivery.state == "pending"
    assert delivery.next_attempt_at is not None and delivery.next_attempt_at > world.clock.now
    assert [key.split(":", 1)[1] for key in parked(world)] == ["j1:notify:0:1"]
    assert world.deps.deliveries.pending.contains("j1")
    for _ in range(2):
        world.clock.advance(120)  # past the schedule's delay plus jitter
        assert release_due(world.deps) == 1
        world.step(Stage.NOTIFY)
    first, second, third = world.http.posts
    assert (
        first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    )
    assert first.body == third.body
    assert first.headers["webhook-signature"] != third.headers["webhook-signature"]  # re-signed
    verify(third, secret)
    delivery = world.deps.deliveries.get("j1")
    assert delivery is not None and delivery.state == "delivered"
    assert [a.outcome for a in delivery.attempts] == ["retry", "retry", "delivered"]
    assert (
        delivery.attempts[1].error is not None
        and "connection refused" in delivery.attempts[1].error
    )
    assert not world.deps.deliveries.pending.contains("j1")


def test_a_gone_endpoint_is_dead_at_once(world: World) -> None:
    ended(world)
    world.http.answers = [PostResponse(410)]
    world.step(Stage.NOTIFY)
    delivery = world.deps.deliveries.get("j1")
    assert delivery is not None and delivery.state == "dead"
    assert parked(world) == []
    assert not world.deps.deliveries.pending.contains("j1")


def test_retries_run_out_into_the_dead_letter_state(world: World) -> None:
    ended(world)
    world.http.answers = [PostResponse(500) for _ in range(3)]
    for _ in range(3):
        world.step(Stage.NOTIFY)
        world.clock.advance(120)
        release_due(world.deps)
    delivery = world.deps.deliveries.get("j1")
    assert delivery is not None and delivery.state == "dead"
    assert len(delivery.attempts) == 3  # the first try and the schedule's two retries
    assert world.queued(Stage.NOTIFY) == 0 and parked(world) == []
    assert not world.deps.deliveries.pending.contains("j1")


def test_messages_after_the_end_of_a_delivery_send_nothing(world: World) -> None:
    ended(world)
    world.http.answers = [PostResponse(200)]
    world.step(Stage.NOTIFY)
    enqueue(world.deps, "j1", Stage.NOTIFY, attempt=5)  # a late re-send
    world.step(Stage.NOTIFY)
    assert len(world.http.posts) == 1


def test_a_duplicate_message_sends_once(world: World) -> None:
    ended(world)
    enqueue(world.deps, "j1", Stage.NOTIFY)  # the same message twice
    world.http.answers = [PostResponse(503)]
    world.step(Stage.NOTIFY)
    assert len(world.http.posts) == 1


def test_a_message_of_an_older_epoch_is_fenced_off(world: World) -> None:
    job, _ = ended(world)
    world.deps.queue(Stage.NOTIFY).get()
    world.http.answers = [PostResponse(503)]
    notify.run(job.model_copy(update={"epoch": 2}), world.deps)  # a re-sent lane, epoch 2
    enqueue(world.deps, "j1", Stage.NOTIFY, epoch=1, attempt=1)
    world.step(Stage.NOTIFY)
    assert len(world.http.posts) == 1


def test_without_a_tenant_secret_nothing_is_sent_and_it_stays_pending(world: World) -> None:
    job, _ = ended(world)
    tenant = world.deps.tenants.get(job.tenant_id)
    assert tenant is not None
    world.deps.tenants.save(tenant.model_copy(update={"webhook_secrets": []}))
    world.step(Stage.NOTIFY)
    assert world.http.posts == []
    assert world.deps.deliveries.pending.contains("j1")  # the sweep tries again later
    delivery = world.deps.deliveries.get("j1")
    assert delivery is not None and delivery.state == "pending" and delivery.attempts == []


def test_a_running_job_or_one_without_a_webhook_gets_no_delivery(world: World) -> None:
    world.deps.jobs.create(new_job(webhook_url=HOOK_URL), "running", Limits())
    world.deps.jobs.create(new_job(), "quiet", Limits())
    world.deps.jobs.finish("quiet", JobStatus.COMPLETED)
    for job_id in ("running", "quiet", "missing"):
        enqueue(world.deps, job_id, Stage.NOTIFY)
    assert world.step(Stage.NOTIFY) == 3
    assert world.http.posts == []
    assert world.deps.deliveries.get("running") is None


def test_a_delivery_whose_worker_died_mid_post_is_resent_within_a_minute(world: World) -> None:
    job, _ = ended(world)
    # The worker takes the message, claims it, opens the delivery, and is killed mid-POST.
    assert world.deps.queue(Stage.NOTIFY).get() is not None
    assert world.deps.jobs.claim_stage(job.id, Stage.NOTIFY, 0, 0)
    opened = world.deps.deliveries.open(notify.first_delivery(world.deps, job))
    in_hand_s = world.deps.settings.webhook_timeout_s + world.deps.settings.stage_lease_s
    world.clock.advance(in_hand_s - 1)  # it could still be posting: nothing re-sent
    assert fail_stale(world.deps)["requeued"] == 0
    world.clock.advance(2)
    assert fail_stale(world.deps)["requeued"] == 1
    world.http.answers = [PostResponse(204)]
    world.step(Stage.NOTIFY)
    (post,) = world.http.posts
    assert post.headers["webhook-id"] == opened.msg_id  # the same delivery, at least once
    delivery = world.deps.deliveries.get(job.id)
    assert delivery is not None and delivery.state == "delivered"


def test_by_default_a_dead_notify_holder_is_noticed_within_a_minute() -> None:
    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    in_hand_s = defaults["webhook_timeout_s"] + defaults["stage_lease_s"]
    assert in_hand_s + FAIL_STALE_INTERVAL_S < 60


def test_a_retry_taken_late_is_not_resent_while_its_worker_posts(world: World) -> None:
    job, _ = ended(world)
    world.http.answers = [PostResponse(503)]
    world.step(Stage.NOTIFY)  # the first attempt fails: a retry parked for ~5 s
    world.clock.advance(200)  # released late (Modal's sweep runs every minute)
    assert release_due(world.deps) == 1
    assert world.deps.queue(Stage.NOTIFY).get() is not None  # a worker takes it now
    assert world.deps.jobs.claim_stage(job.id, Stage.NOTIFY, 0, 1)
    assert fail_stale(world.deps)["requeued"] == 0  # long due, but just taken: in hand
