"""Round-trip budgets on Modal (issue 12), counted by the Modal emulator.

Runs `scripts/bench_roundtrips.py`'s measurement: the real ingress with every admission
limit and an Idempotency-Key, one whole job without inputs on warm containers, and a GET.
Each step must stay within its budget of calls in total and in sequence; a change that
adds a round trip to any step fails here, naming the step and its calls.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "bench_roundtrips.py"
#: Real sleeping per call (a fraction of the 25 ms latency): large enough that calls run
#: at once overlap even on a loaded machine, so the chain is not over-counted.
REAL_SCALE = 2.0

#: step -> (most calls in total, most calls in sequence). The issue's goals are POST
#: <= 8 in sequence and <= 12 in total, whole job <= 20 in sequence and <= 30 in total,
#: GET <= 2; the totals here are what the store's layout allows today (docs/benchmarks.md).
#: The maintenance indexes (issue 9) add calls off the hot path's sequence: the active
#: entry beside admission's first reads, and the retention entry with its hour's hint at
#: release. Exact counts, each cut named: what the job owns rides in its record (POST 15
#: -> 14); a hand-off carries the record and the first one the request, so render reads
#: neither and upload not the record (13 -> 11, 10 -> 9); the decision carries the last
#: stage's times, so upload does not rewrite the record (9 -> 8); the release's markers go
#: in its hint batch (9 -> 7); a win at a fresh slot hint reads no floor (POST 14 -> 12).
#: The POST and whole-job chains (6 and 18 measured) keep the issue's goals as their
#: bound, since a chain is read from real overlap on a loaded machine.
BUDGETS: dict[str, tuple[int, int]] = {
    "POST /v1/jobs": (12, 8),
    "fetch": (0, 0),  # a job without inputs skips the fetch hop
    "render": (11, 7),
    "upload": (8, 5),
    "upload: slots freed after the terminal state": (7, 3),
    "whole job (POST to the terminal state)": (38, 20),
    "GET /v1/jobs/{id}": (2, 1),
}


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_roundtrips", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured() -> tuple[dict[str, tuple[int, int]], object]:
    bench = load_bench()
    rows, ledger = bench.measure(real_scale=REAL_SCALE)
    return {row.step: (row.total, row.sequential) for row in rows}, ledger


@pytest.mark.parametrize("step", sorted(BUDGETS))
def test_step_stays_within_its_round_trip_budget(
    measured: tuple[dict[str, tuple[int, int]], object], step: str
) -> None:
    counts, ledger = measured
    total, sequential = counts[step]
    most_total, most_sequential = BUDGETS[step]
    calls = [f"{r.kind} {r.name} {r.op}" for r in ledger.calls(step=step)]  # type: ignore[attr-defined]
    assert total <= most_total, f"{step}: {total} calls (budget {most_total}): {calls}"
    assert sequential <= most_sequential, (
        f"{step}: {sequential} calls in sequence (budget {most_sequential}): {calls}"
    )


def test_a_warm_container_reads_no_tenant_or_catalog(
    measured: tuple[dict[str, tuple[int, int]], object],
) -> None:
    _counts, ledger = measured
    for step in ("POST /v1/jobs", "GET /v1/jobs/{id}"):
        names = {r.name for r in ledger.calls(step=step)}  # type: ignore[attr-defined]
        assert not names & {"bench-tenants", "bench-catalog"}, step
        lookups = [r for r in ledger.calls(step=step) if r.op == "from_name"]  # type: ignore[attr-defined]
        assert lookups == [], f"{step}: new handles on a warm container"
