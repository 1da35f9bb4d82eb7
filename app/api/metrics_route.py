"""`GET /metrics`: Prometheus text format, no auth (bind the ingress to a private address)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.ingress import DepsDep
from app.engine.metrics import CONTENT_TYPE, render_text

metrics_router = APIRouter()


@metrics_router.get("/metrics", tags=["service"], include_in_schema=False)
def metrics(deps: DepsDep) -> Response:
    """Counters of every local process, and queue and job gauges read from the store now."""
    return Response(content=render_text(deps), media_type=CONTENT_TYPE)
