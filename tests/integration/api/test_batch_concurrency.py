"""Batches from several OS processes at once, one SQLite file: the caps hold exactly."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.ingress import create_app
from app.core.config import Settings
from app.engine.deps import Deps
from app.store.backends.sqlite import SqliteBackend
from tests.integration.ingress_harness import WORKFLOW, make_harness
from tests.support.settings import SettingsFactory

CTX = mp.get_context("fork")
NOW = 1_700_000_010.0


def _batch_worker(
    settings: Settings, api_key: str, user: str, size: int, barrier: Any, results: Any
) -> None:
    # One fixed time for every process: the rate-limit window cannot roll over mid-test.
    deps = Deps(settings=settings, backend=SqliteBackend(settings.state_db_path), clock=lambda: NOW)
    headers = {"Authorization": f"Bearer {api_key}", "X-User-ID": user}
    with TestClient(create_app(deps)) as http:
        barrier.wait()
        response = http.post(
            "/v1/jobs/batch", json={"jobs": [{"workflow": WORKFLOW}] * size}, headers=headers
        )
    results.put((response.status_code, [r["status"] for r in response.json()["results"]]))


def _run(settings: Settings, api_key: str, users: list[str], size: int) -> Counter[int]:
    barrier = CTX.Barrier(len(users))
    results = CTX.Queue()
    procs = [
        CTX.Process(target=_batch_worker, args=(settings, api_key, u, size, barrier, results))
        for u in users
    ]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=90) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    assert all(code == 200 for code, _ in outcomes)
    return Counter(status for _, statuses in outcomes for status in statuses)


@pytest.fixture
def settings(settings_factory: SettingsFactory) -> Settings:
    return settings_factory(public_url="http://testserver", max_batch_jobs=20)


def test_six_processes_batching_for_one_user_admit_exactly_the_user_cap(
    settings: Settings,
) -> None:
    harness = make_harness(settings, acme_cap=5)
    counts = _run(settings, harness.acme.api_key, ["alice"] * 6, 8)
    assert counts == {202: 5, 429: 43}


def test_batches_of_many_users_admit_exactly_the_tenant_cap(settings: Settings) -> None:
    harness = make_harness(settings, acme_cap=5)
    harness.deps.tenants.update("acme", max_active_jobs=12)
    counts = _run(settings, harness.acme.api_key, [f"user{i}" for i in range(6)], 6)
    assert counts == {202: 12, 429: 24}


def test_batches_under_a_rate_limit_admit_exactly_the_rate(settings: Settings) -> None:
    harness = make_harness(settings, acme_cap=50, beta_rate=7)
    counts = _run(settings, harness.beta.api_key, [f"user{i}" for i in range(4)], 5)
    assert counts == {202: 7, 429: 13}
