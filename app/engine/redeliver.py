"""Re-sending a dead webhook delivery on a tenant's request.

Same `webhook-id` and body as every earlier attempt (its output links signed afresh), so
a receiver that already processed it (say, before a crash on our side) can drop it:
delivery is at least once.
"""

from __future__ import annotations

from app.core.models import Job, Stage
from app.engine.deps import Deps
from app.engine.pipeline import enqueue
from app.store.deliveries import Delivery


def resend_webhook(deps: Deps, job: Job) -> Delivery | None:
    """Queue one more attempt of the job's dead delivery; None if it is not dead."""
    delivery = deps.deliveries.reopen(job.tenant_id, job.id, deps.clock())
    if delivery is None:
        return None
    # A new attempt number is a new claim: the re-send runs even though earlier
    # attempts' claims exist; a second resend of the same attempt is a duplicate.
    enqueue(deps, job.id, Stage.NOTIFY, epoch=delivery.epoch, attempt=len(delivery.attempts))
    return delivery
