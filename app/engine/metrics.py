"""Prometheus metrics: counters where things happen, gauges read from the store at scrape.

`prometheus-client` does the bookkeeping and the text format. The local runner runs
each stage in its own process, so counters and histograms use prometheus_client's
multiprocess mode (`enable_multiprocess`: one mmap file per process under the data
folder, summed at scrape); gauges (queue depths, oldest waiting message, jobs by state)
are not kept per process at all but computed from the store when `/metrics` is read.
On Modal no process lives long enough to be scraped, so `log_counters` writes the same
counters as one structured log line at the end of each drain and maintenance run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app.core.logs import get_logger
from app.core.models import Stage
from app.engine.deps import Deps

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

STAGE_SECONDS = Histogram(
    "comfyui_saas_stage_duration_seconds",
    "Time a stage call took, by stage and outcome (ok, retry, failed, cancelled, parked).",
    ["stage", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
RETRIES = Counter(
    "comfyui_saas_stage_retries_total",
    "Stage retries scheduled, by stage and error code.",
    ["stage", "code"],
)
ADMISSION_REFUSALS = Counter(
    "comfyui_saas_admission_refusals_total",
    "Requests refused by admission, by reason.",
    ["reason"],
)
JOBS_FINISHED = Counter(
    "comfyui_saas_jobs_finished_total", "Terminal decisions, by status.", ["status"]
)
WEBHOOK_ATTEMPTS = Counter(
    "comfyui_saas_webhook_attempts_total", "Webhook delivery attempts, by outcome.", ["outcome"]
)
RENDER_SECONDS = Counter(
    "comfyui_saas_render_seconds_total", "Seconds spent rendering, by tenant.", ["tenant"]
)
COUNTERS = (
    STAGE_SECONDS,
    RETRIES,
    ADMISSION_REFUSALS,
    JOBS_FINISHED,
    WEBHOOK_ATTEMPTS,
    RENDER_SECONDS,
)


def enable_multiprocess(folder: Path) -> None:
    """Share counters between this process and the children it starts (before any count).

    The folder is emptied first: files of an earlier run would be summed in.
    """
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)  # children inherit it and pick the mode up
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class StoreCollector(Collector):
    """Gauges computed from the queues and job records at scrape time."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def collect(self) -> Iterator[Metric]:
        deps = self.deps
        now = deps.clock()
        depth = GaugeMetricFamily(
            "comfyui_saas_queue_depth", "Messages waiting on each stage's queue.", labels=["stage"]
        )
        oldest = GaugeMetricFamily(
            "comfyui_saas_queue_oldest_age_seconds",
            "Age of the oldest job waiting for each stage (no holder yet).",
            labels=["stage"],
        )
        jobs = GaugeMetricFamily(
            "comfyui_saas_jobs", "Active jobs by state and stage.", labels=["state", "stage"]
        )
        ages: dict[Stage, float] = {}
        counts: dict[tuple[str, str], int] = {}
        for job_id in list(deps.jobs.active_ids()):
            job = deps.jobs.find(job_id)
            if job is None or job.is_terminal:
                continue
            key = (job.status.value, job.stage.value)
            counts[key] = counts.get(key, 0) + 1
            queued = job.stage_times.get(job.stage)
            if job.lease_until is None and queued is not None and queued.queued_at is not None:
                ages[job.stage] = max(ages.get(job.stage, 0.0), now - queued.queued_at)
        for stage in Stage:
            depth.add_metric([stage.value], deps.queue(stage).len())
            oldest.add_metric([stage.value], round(ages.get(stage, 0.0), 3))
        for (state, stage_name), count in sorted(counts.items()):
            jobs.add_metric([state, stage_name], count)
        yield depth
        yield oldest
        yield jobs


def render_text(deps: Deps) -> bytes:
    """The whole exposition: this deployment's counters plus the store's gauges."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for metric in COUNTERS:
            registry.register(metric)
    registry.register(StoreCollector(deps))
    return generate_latest(registry)


def counter_values() -> dict[str, float]:
    """This process's counters as `name{labels}` -> value (for the Modal log line)."""
    flat: dict[str, float] = {}
    for metric in COUNTERS:
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith(("_created", "_bucket")):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                flat[f"{sample.name}{{{labels}}}"] = sample.value
    return flat


def log_counters(deps: Deps, run: str) -> None:
    """On Modal, where nothing scrapes a container: the counters as one log line."""
    if deps.settings.backend != "modal":
        return
    get_logger().info("metrics", run=run, counters=counter_values())
