"""The ingress under a real uvicorn server, with requests that really overlap."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.api.ingress import create_app
from app.core.models import Stage
from tests.integration.ingress_harness import (
    WORKFLOW,
    Harness,
    free_socket,
    make_harness,
    serve_in_thread,
)
from tests.support.settings import SettingsFactory


@pytest.fixture
def served(settings_factory: SettingsFactory) -> Iterator[tuple[Harness, str]]:
    sock = free_socket()
    port = sock.getsockname()[1]
    settings = settings_factory(public_url=f"http://127.0.0.1:{port}", max_request_bytes=64_000)
    harness = make_harness(settings, acme_cap=5)
    with serve_in_thread(create_app(harness.deps), sock) as base_url:
        yield harness, base_url


def test_burst_of_8_for_one_user_with_cap_5_gives_5_accepted_and_3_429(
    served: tuple[Harness, str],
) -> None:
    harness, base_url = served
    headers = harness.headers(harness.acme, "alice")
    start = threading.Barrier(8)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
            start.wait()  # all eight connections are open before any request is sent
            return client.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=headers)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(post, range(8)))

    codes = Counter(r.status_code for r in responses)
    assert codes == {202: 5, 429: 3}, [r.text for r in responses]
    for response in responses:
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "user_concurrency_limit"
            assert response.headers["retry-after"]
    accepted = {r.json()["id"] for r in responses if r.status_code == 202}
    assert len(accepted) == 5
    assert harness.deps.queue(Stage.RENDER).len() == 5  # no inputs: straight to render


def test_chunked_body_over_the_limit_is_413_on_a_real_server(served: tuple[Harness, str]) -> None:
    harness, base_url = served

    def chunks() -> Iterator[bytes]:
        # Over the 64 kB limit, yet small enough for socket buffers to take it whole,
        # so the client reads the answer instead of failing on a closed connection.
        for _ in range(20):
            yield b"x" * 10_000

    with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
        response = client.post(
            "/v1/jobs", content=chunks(), headers=harness.headers(harness.acme, "alice")
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_served_health(served: tuple[Harness, str]) -> None:
    _, base_url = served
    assert httpx.get(f"{base_url}/health", trust_env=False).json()["status"] == "ok"
