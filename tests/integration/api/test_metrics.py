"""`/metrics`: Prometheus text that parses, with counters that move as a job runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api.ingress import create_app
from app.core.models import Job, Stage
from app.engine.deps import Deps
from app.engine.pipeline import process_message
from tests.integration.ingress_harness import WORKFLOW, Harness, make_harness
from tests.paths import REPO_ROOT
from tests.support.settings import SettingsFactory

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def harness(settings_factory: SettingsFactory) -> Harness:
    return make_harness(settings_factory(public_url="http://testserver"), acme_cap=1)


def scrape(http: TestClient) -> Samples:
    answer = http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def ok(job: Job, deps: Deps) -> Job:
    return job


def run(deps: Deps, stage: Stage, fn: Callable[[Job, Deps], Job] = ok) -> None:
    while (raw := deps.queue(stage).get()) is not None:
        process_message(raw, deps, {stage: fn})


def test_metrics_parse_and_move_as_a_job_runs(harness: Harness) -> None:
    http = TestClient(create_app(harness.deps))
    headers = harness.headers(harness.acme, "alice")
    before = scrape(http)
    assert http.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=headers).status_code == 202
    refused = http.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=headers)
    assert refused.status_code == 429  # cap of 1
    queued = scrape(http)
    # A job without inputs skips the fetch hop: it waits in the render queue.
    assert value(queued, "comfyui_saas_queue_depth", stage="render") == 1
    assert value(queued, "comfyui_saas_jobs", state="queued", stage="render") == 1
    harness.clock.advance(7)
    assert value(scrape(http), "comfyui_saas_queue_oldest_age_seconds", stage="render") == 7
    refusals = "comfyui_saas_admission_refusals_total"
    assert (
        value(queued, refusals, reason="user_concurrency_limit")
        == value(before, refusals, reason="user_concurrency_limit") + 1
    )
    for stage in (Stage.FETCH, Stage.RENDER, Stage.UPLOAD):
        run(harness.deps, stage)
    after = scrape(http)
    finished = "comfyui_saas_jobs_finished_total"
    assert (
        value(after, finished, status="completed")
        == value(before, finished, status="completed") + 1
    )
    durations = "comfyui_saas_stage_duration_seconds_count"
    for name in ("render", "upload"):
        assert value(after, durations, stage=name, outcome="ok") == (
            value(before, durations, stage=name, outcome="ok") + 1
        )
    render_s = "comfyui_saas_render_seconds_total"
    assert value(after, render_s, tenant=harness.acme.id) >= value(
        before, render_s, tenant=harness.acme.id
    )
    assert ((render_s, (("tenant", harness.acme.id),))) in after
    assert value(after, "comfyui_saas_queue_depth", stage="render") == 0
    assert value(after, "comfyui_saas_jobs", state="queued", stage="render") == 0


def test_counters_of_several_processes_are_summed(tmp_path: Path) -> None:
    """The local runner's mode: each stage process counts, the ingress adds them up."""
    folder = tmp_path / "metrics"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    setup = "from pathlib import Path\nfrom app.engine import metrics\n"
    subprocess.run(
        [sys.executable, "-c", setup + f"metrics.enable_multiprocess(Path({str(folder)!r}))"],
        check=True,
        env=env,
        timeout=60,
    )
    env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    count = setup + "metrics.JOBS_FINISHED.labels('completed').inc()"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], check=True, env=env, timeout=60)
    read = setup + textwrap.dedent(
        """
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", read],
        check=True,
        env=env,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    families = {f.name: f for f in text_string_to_metric_families(out)}
    [sample] = [
        s for s in families["comfyui_saas_jobs_finished"].samples if s.name.endswith("_total")
    ]
    assert sample.labels == {"status": "completed"} and sample.value == 2
