"""A simulated month of production on the emulated Modal app (`scripts/modal_month.py`).

The real app (`ModalApp`) on a manual-mode emulator with an accelerated clock: every
simulated minute the jobs due are posted to the ingress, the CPU stages run, the render
function runs at most `render_per_min` inputs (a fixed GPU capacity, so a burst builds a
render backlog) and the schedules fire at the app's cadence (sweep every minute, fail_stale,
cleanup hourly with its per-run limit scaled to the load).
Rendering is instant (a fake ComfyUI client); containers are killed mid-message now and
then; some tenants stay idle for more than 7 days; one burst fills the render queue (the
partition limit is scaled down with the load so a small month fills it too).

Counting costs nothing the app could see: the verdicts read the emulator's stores
directly (`live_items`), never through a counted round trip.
"""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from unittest import mock

from fastapi.testclient import TestClient

import app.stages as stages_module
from app.adapters.comfy.messages import ComfyOutput
from app.core.config import Settings
from app.core.ids import JOB_ID_PATTERN
from app.core.models import JobStatus, Stage
from app.engine.deps import Deps
from app.store import jobs as jobs_module
from app.store.keys import (
    ACTIVE_DICT,
    DELAYED_DICT,
    JOB_DICTS,
    RELEASED_PREFIX,
    RETENTION_HOUR_DICT_PREFIX,
    SLOT_PREFIX,
    TENANTS_DICT,
    parse_slot_key,
    released_key,
)
from tests.modal_emulator.app_harness import ModalApp, harness_settings
from tests.modal_emulator.clock import SimClock
from tests.modal_emulator.context import current_input
from tests.modal_emulator.emulator import ModalEmulator
from tests.modal_emulator.errors import ContainerStopped, EmulatedHang
from tests.unit.stages.fakes import FakeComfy, png_bytes

DAY_S = 86_400
#: Server-chosen job ids, found in any stored key or value.
JOB_ID = re.compile(JOB_ID_PATTERN.encode())
JOBS_PER_USER_PER_DAY = 5
#: Idle tenants submit on day 0 and again after this many days (longer than the Dict's
#: 7-day expiry of untouched entries).
IDLE_DAYS = 8
WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "m"}},
}
OBJECT_INFO: dict[str, Any] = {
    "EmptyImage": {
        "input": {
            "required": {
                "width": ["INT", {}],
                "height": ["INT", {}],
                "batch_size": ["INT", {}],
                "color": ["INT", {}],
            }
        },
        "output": ["IMAGE"],
        "output_node": False,
    },
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}},
        "output": [],
        "output_node": True,
    },
}
#: The scheduled functions, run as the clock passes their periods (`refresh_durable`
#: keeps idle tenants' records past the Dict's 7-day expiry).
MAINTENANCE = ("sweep", "fail_stale", "cleanup", "refresh_durable")
#: Job and output retention in the simulation (an operator's setting; default 7 days).
RETENTION_S = 3 * 86_400
#: The production load the defaults are sized for (issue 9).
FULL_DAU = 2000
#: Scheduled functions that do nothing on an idle system, skipped over idle stretches.
IDLE_SKIPPED = ("sweep", "fail_stale")


@dataclass
class Tenant:
    id: str
    api_key: str
    users: list[str]
    idle: bool


@dataclass
class Tally:
    """What the simulation saw, filled as it runs."""

    posted: int = 0
    admitted: list[str] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)
    decisions: dict[str, list[str]] = field(default_factory=dict)
    purged: set[str] = field(default_factory=set)
    rpcs_by_job: Counter[str] = field(default_factory=Counter)
    maintenance_rpcs: dict[str, int] = field(default_factory=dict)
    active_max: int = 0
    hangs: int = 0
    crashes: int = 0
    sweeps_skipped: int = 0
    decided_at: dict[str, float] = field(default_factory=dict)
    #: Jobs each cleanup run purged, in order (does cleanup keep up with what ends?).
    cleanup_purged: list[int] = field(default_factory=list)


class Month:
    """One simulated month; `run()` returns the JSON-able result."""

    def __init__(
        self,
        days: int,
        dau: int,
        *,
        seed: int = 0,
        root: Path | None = None,
        crash_every: int = 400,
        progress: TextIO | None = None,
    ) -> None:
        self.days = days
        self.dau = dau
        self.rng = random.Random(seed)
        # Volume views are real folders: on tmpfs when there is one (a disk is slow).
        shm = Path("/dev/shm")
        base = str(shm) if shm.is_dir() else None
        self.tmp = (
            None if root is not None else tempfile.TemporaryDirectory(prefix="month-", dir=base)
        )
        self.root = root or Path(self.tmp.name if self.tmp else ".")
        per_minute = dau * JOBS_PER_USER_PER_DAY / (DAY_S / 60)
        #: GPU capacity: three times the average arrival rate (the burst still backs up).
        self.render_per_min = max(2, math.ceil(3 * per_minute))
        self.burst_jobs = dau * JOBS_PER_USER_PER_DAY // 2
        #: Render partition limit scaled so the burst overflows it (Modal's is 5,000).
        self.render_queue_limit = max(20, self.burst_jobs // 3)
        self.crash_every = crash_every
        #: Where to write one line per simulated day (long runs: the rate so far).
        self.progress = progress
        self.tally = Tally()
        self.emu = ModalEmulator(
            mode="manual",
            latency_s=0.0,
            clock=SimClock(real_wait_scale=0.0),
            hang_bound_s=0.0,
            seed=seed,
            root=self.root / "emulator",
        )
        self.renders = 0
        # Retention shorter than the Dict's 7-day expiry, so cleanup (not the expiry)
        # removes ended jobs and the retention index is exercised.
        #: Cleanup's per-run limit scaled like the render queue (the default at 2,000
        #: daily users), so a small month's burst also leaves cleanup behind for a while.
        cleanup_limit = max(5, math.ceil(Settings().cleanup_max_jobs_per_run * dau / FULL_DAU))
        settings = harness_settings(
            self.root,
            log_level="ERROR",
            job_retention_s=RETENTION_S,
            output_retention_s=RETENTION_S,
            cleanup_max_jobs_per_run=cleanup_limit,
        )
        self.app = ModalApp(self.emu, settings, comfy=self._comfy)
        self.tenants: list[Tenant] = []

    # ---- the fake GPU --------------------------------------------------------------------

    def _comfy(self) -> FakeComfy:
        output = ComfyOutput(node_id="2", filename="m_00001_.png", subfolder="", type="output")
        return FakeComfy(
            outputs=[output],
            files={output.filename: png_bytes()},
            object_info_answer=OBJECT_INFO,
            during_run=self._maybe_crash,
        )

    def _maybe_crash(self) -> None:
        """Now and then the render container dies mid-message (OOM, preemption)."""
        self.renders += 1
        if self.crash_every and self.renders % self.crash_every == 0:
            ctx = current_input()
            if ctx is not None:
                self.tally.crashes += 1
                ctx.container.function.crash(ctx.container)
                raise ContainerStopped("container crashed")

    # ---- observation -----------------------------------------------------------------

    @contextmanager
    def _observed(self) -> Iterator[None]:
        """Tag round trips by job and by maintenance run; record decisions and purges."""
        tally, ledger = self.tally, self.emu.ledger
        real_handler = stages_module.handler
        real_finish = jobs_module.JobStore.finish
        real_complete = jobs_module.JobStore.complete
        real_purge = jobs_module.JobStore.purge

        def handler(stage: Stage, deps: Deps) -> Any:
            handle = real_handler(stage, deps)

            def tagged(raw: str) -> None:
                job_id = str(json.loads(raw).get("job_id", ""))
                with ledger.step(f"job:{job_id}"):
                    handle(raw)

            return tagged

        def finish(store: Any, job_id: str, status: JobStatus, *a: Any, **k: Any) -> bool:
            decided = bool(real_finish(store, job_id, status, *a, **k))
            if decided:
                tally.decisions.setdefault(job_id, []).append(status.value)
                tally.decided_at.setdefault(job_id, store.clock())
            return decided

        # `complete` decides without `finish` (the record and the decision at once).
        def complete(store: Any, job: Any) -> bool:
            decided = bool(real_complete(store, job))
            if decided:
                tally.decisions.setdefault(job.id, []).append(JobStatus.COMPLETED.value)
                tally.decided_at.setdefault(job.id, store.clock())
            return decided

        def purge(store: Any, job_id: str, *args: Any, **kwargs: Any) -> int:
            tally.purged.add(job_id)
            return int(real_purge(store, job_id, *args, **kwargs))

        with (
            mock.patch.object(stages_module, "handler", handler),
            mock.patch.object(jobs_module.JobStore, "finish", finish),
            mock.patch.object(jobs_module.JobStore, "complete", complete),
            mock.patch.object(jobs_module.JobStore, "purge", purge),
        ):
            yield

    def _wrap_maintenance(self) -> None:
        for name in MAINTENANCE:
            fn = self.app.functions[name]
            body = fn.impl
            runs = [0]

            def run(body: Any = body, name: str = name, runs: list[int] = runs) -> Any:
                runs[0] += 1
                with self.emu.ledger.step(f"maint:{name}:{runs[0]}"):
                    result = body()
                if name == "cleanup":
                    self.tally.cleanup_purged.append(int(result["jobs_deleted"]))
                return result

            fn.impl = run

    def _collect_rpcs(self) -> None:
        """Fold the ledger's records into the tally and drop them (a month is millions)."""
        ledger = self.emu.ledger
        with ledger._lock:
            rpcs, ledger._rpcs = ledger._rpcs, []
            self.tally.hangs += len(ledger.hangs)
            ledger.hangs.clear()
        for rpc in rpcs:
            step = rpc.step or ""
            if step.startswith("job:"):
                self.tally.rpcs_by_job[step[4:]] += 1
            elif step.startswith("maint:"):
                self.tally.maintenance_rpcs[step] = self.tally.maintenance_rpcs.get(step, 0) + 1

    def _retention_hours(self) -> list[str]:
        """The names (without the app's prefix) of the retention hour dicts that exist."""
        prefix = f"{self.app.settings.modal_app_name}-"
        hours = f"{prefix}{RETENTION_HOUR_DICT_PREFIX}"
        return [
            name.removeprefix(prefix) for _env, name in self.emu.dicts if name.startswith(hours)
        ]

    def _live(self, dict_name: str) -> list[tuple[Any, bytes]]:
        name = f"{self.app.settings.modal_app_name}-{dict_name}"  # ModalBackend's naming
        store = self.emu.find_dict(name, None, create=False)
        return [] if store is None else store.live_items()

    # ---- the load --------------------------------------------------------------------

    def _setup(self, client: TestClient) -> None:
        self.app.publish_catalog(OBJECT_INFO)
        render_queue = self.emu.find_queue(
            f"{self.app.settings.modal_app_name}-{Stage.RENDER.value}", None, create=True
        )
        assert render_queue is not None
        render_queue.max_items = self.render_queue_limit
        count = max(4, self.dau // 25)
        deps = self.app.deps()
        for index in range(count):
            made = deps.tenants.create(f"tenant-{index}", max_active_jobs_per_user=5)
            self.tenants.append(Tenant(made.tenant.id, made.api_key, [], idle=index % 4 == 3))
        for user in range(self.dau):
            self.tenants[user % count].users.append(f"user-{user}")
        del client

    def _schedule(self) -> dict[int, list[tuple[Tenant, str]]]:
        """Minute -> submissions: each active user's 5 jobs a day, plus the burst."""
        plan: dict[int, list[tuple[Tenant, str]]] = {}
        for day in range(self.days):
            for tenant in self.tenants:
                if tenant.idle and 0 < day < min(IDLE_DAYS + 1, self.days - 1):
                    continue
                for user in tenant.users:
                    for _ in range(JOBS_PER_USER_PER_DAY):
                        minute = day * 1440 + self.rng.randrange(1440)
                        plan.setdefault(minute, []).append((tenant, user))
        burst_minute = (self.days // 2) * 1440 + 720
        active = [t for t in self.tenants if not t.idle]
        for n in range(self.burst_jobs):
            tenant = active[n % len(active)]
            user = f"burst-{n // JOBS_PER_USER_PER_DAY}"
            plan.setdefault(burst_minute, []).append((tenant, user))
        return plan

    def _post(self, client: TestClient, tenant: Tenant, user: str) -> None:
        self.tally.posted += 1
        headers = {"Authorization": f"Bearer {tenant.api_key}", "X-User-ID": user}
        key = f"{user}-{self.tally.posted}"
        try:
            with self.emu.ledger.step("post"):
                answer = client.post(
                    "/v1/jobs",
                    json={"workflow": WORKFLOW},
                    headers={**headers, "Idempotency-Key": key},
                )
        except EmulatedHang:
            # On Modal this request would hang forever (counted in `hung_puts`); the job
            # it admitted is found from its record.
            self._drop_step("post")
            return
        if answer.status_code in (200, 202):
            job_id = answer.json()["id"]
            self.tally.admitted.append(job_id)
            posted = self.emu.ledger.calls(step="post")
            self.tally.rpcs_by_job[job_id] += len(posted)
        else:
            self.tally.refused[answer.status_code] += 1
        self._drop_step("post")

    def _drop_step(self, step: str) -> None:
        ledger = self.emu.ledger
        with ledger._lock:
            ledger._rpcs = [r for r in ledger._rpcs if r.step != step]

    def _run_stages(self) -> None:
        """CPU stages until idle; render at most `render_per_min` inputs this minute."""
        cpu = [self.app.functions[s.value] for s in Stage if s is not Stage.RENDER]
        render = self.app.functions["Render.run"]
        budget = self.render_per_min
        while True:
            progressed = any(fn.step() for fn in cpu)
            if budget > 0 and render.step():
                budget -= 1
                progressed = True
            if not progressed:
                return

    def _minute(self, client: TestClient, due: list[tuple[Tenant, str]]) -> None:
        for tenant, user in due:
            self._post(client, tenant, user)
        # Sampled here too: a burst's jobs may all end within the minute (put timeouts
        # and job timeouts pass emulated time), and fail_stale ran over them meanwhile.
        self.tally.active_max = max(self.tally.active_max, len(self._live(ACTIVE_DICT)))
        self._run_stages()
        self._advance(60)
        active = len(self._live(ACTIVE_DICT))
        self.tally.active_max = max(self.tally.active_max, active)
        self._collect_rpcs()

    def _idle(self) -> bool:
        """Nothing in flight: no job active, nothing parked or queued, no call pending."""
        if self._live(ACTIVE_DICT) or self._live(DELAYED_DICT):
            return False
        if any(fn.pending for fn in self.app.functions.values()):
            return False
        return all(store.length(None) == 0 for store in self.emu.queues.values())

    def _skip_idle(self, client: TestClient, minutes: int) -> int:
        """Jump over an idle stretch: cleanup still fires on schedule; sweeps and
        fail_stale passes in between are skipped (with no job active, nothing parked or
        queued, each only reads empty queues and indexes), which keeps a month cheap to
        simulate. Both fire again at the stretch's end."""
        target = self.emu.clock.now() + 60 * minutes
        cleanup_at = self.app.functions["cleanup"].next_fire
        if cleanup_at is not None and cleanup_at < target:
            # Stop at cleanup's fire: it runs when it fires, not when the jump ends.
            minutes = max(1, math.ceil((cleanup_at - self.emu.clock.now()) / 60))
            target = self.emu.clock.now() + 60 * minutes
        self.tally.sweeps_skipped += minutes - 1
        for name in IDLE_SKIPPED:
            fn = self.app.functions[name]
            if fn.next_fire is not None and fn.next_fire < target:
                fn.next_fire = target
        self._advance(target - self.emu.clock.now())
        self._collect_rpcs()
        del client
        return minutes

    def _advance(self, seconds: float) -> None:
        for fired in self.emu.advance(seconds, run=False):
            del fired
            maintenance = [self.app.functions[name] for name in MAINTENANCE]
            while any(fn.step() for fn in maintenance):
                pass
            self._run_stages()

    # ---- verdicts --------------------------------------------------------------------

    def _verdicts(self, client: TestClient) -> dict[str, Any]:
        tally = self.tally
        present = {
            str(key)[len("job:") :] for key, _ in self._live("jobs") if str(key).startswith("job:")
        }
        decided = set(tally.decisions)
        # Jobs whose POST hung were admitted all the same: found by their records.
        admitted = set(tally.admitted) | decided | present
        by_state = Counter(states[0] for states in tally.decisions.values() if states)
        lost = sorted(j for j in admitted - decided if j not in present)
        stuck = sorted(j for j in admitted - decided if j in present)
        double = sorted(j for j, states in tally.decisions.items() if len(states) > 1)
        tenants_lost = 0
        tenant_keys = {str(k) for k, _ in self._live(TENANTS_DICT)}
        for tenant in self.tenants:
            headers = {"Authorization": f"Bearer {tenant.api_key}", "X-User-ID": "probe"}
            gone = f"tenant:{tenant.id}" not in tenant_keys
            if gone or client.get("/v1/jobs", headers=headers).status_code == 401:
                tenants_lost += 1
        slots = dict(self._live("slots"))
        leaked = 0
        for key in slots:
            name = str(key)
            if not name.startswith(SLOT_PREFIX) or name.startswith(RELEASED_PREFIX):
                continue
            scope, index, generation = parse_slot_key(name)
            if released_key(scope, index, generation) not in slots:
                leaked += 1  # every job has ended: a held tenure is a leak
        # Jobs whose retention and a day have passed (hourly cleanup runs, each purging
        # at most its limit, work off a burst within that): none of their keys may be
        # left, whether cleanup purged them or the Dict's expiry did.
        horizon = self.emu.clock.now() - self.app.settings.job_retention_s - DAY_S
        retained = {j for j, at in tally.decided_at.items() if at < horizon}
        retained_keys = 0
        for dict_name in (*JOB_DICTS, *self._retention_hours()):
            for key, value in self._live(dict_name):
                named = set(JOB_ID.findall(f"{key}".encode() + value))
                retained_keys += any(j.decode() in retained for j in named)
        per_job = sorted(tally.rpcs_by_job[j] for j in admitted)
        maint = max(tally.maintenance_rpcs.values(), default=0)
        maint_by_kind = {
            name: max(
                (v for k, v in tally.maintenance_rpcs.items() if k.startswith(f"maint:{name}:")),
                default=0,
            )
            for name in MAINTENANCE
        }
        return {
            "days": self.days,
            "dau": self.dau,
            "tenants": len(self.tenants),
            "posted": tally.posted,
            "jobs": len(admitted),
            "refused": {str(k): v for k, v in sorted(tally.refused.items())},
            "by_state": dict(sorted(by_state.items())),
            "lost": len(lost),
            "double_terminal": len(double),
            "stuck": len(stuck),
            "tenants_lost": tenants_lost,
            "leaked_slots": leaked,
            "keys_left_of_retained_jobs": retained_keys,
            "hung_puts": tally.hangs,
            "purged": len(tally.purged),
            "retained_away": len(retained),
            "sweeps_skipped_idle": tally.sweeps_skipped,
            "crashes": tally.crashes,
            "input_failures": Counter(type(exc).__name__ for _, exc in self.emu.failures),
            "active_jobs_max": tally.active_max,
            "ended_per_day_max": max(
                Counter(int(at // DAY_S) for at in tally.decided_at.values()).values(),
                default=0,
            ),
            # Cleanup keeping up: runs, the most one run purged (capped at the per-run
            # limit) against the most jobs that ended in one hour.
            "cleanup_runs": len(tally.cleanup_purged),
            "cleanup_purged_per_run_max": max(tally.cleanup_purged, default=0),
            "cleanup_runs_at_limit": sum(
                n >= self.app.settings.cleanup_max_jobs_per_run for n in tally.cleanup_purged
            ),
            "ended_per_hour_max": max(
                Counter(int(at // 3600) for at in tally.decided_at.values()).values(),
                default=0,
            ),
            "maintenance_rpcs_max": maint,
            "maintenance_rpcs_max_by_kind": maint_by_kind,
            "rpcs_per_job_p50": per_job[len(per_job) // 2] if per_job else 0,
            "rpcs_per_job_max": per_job[-1] if per_job else 0,
            "render_per_min": self.render_per_min,
            "render_queue_limit": self.render_queue_limit,
            "cleanup_limit": self.app.settings.cleanup_max_jobs_per_run,
        }

    # ---- the month -----------------------------------------------------------------

    def _report_day(self, day: int, started: float) -> None:
        if self.progress is None:
            return
        wall = time.perf_counter() - started
        cpu = time.process_time()
        posted = self.tally.posted
        print(
            f"day {day}: posted {posted}, wall {wall:.0f} s, cpu {cpu:.0f} s,"
            f" {1000 * cpu / max(posted, 1):.1f} ms cpu/job",
            file=self.progress,
            flush=True,
        )

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            with self._observed(), self.app.installed():
                self._wrap_maintenance()
                # One client for the month: its portal (an event loop thread) serves
                # every request, where a bare TestClient starts a thread per request.
                with TestClient(self.app.asgi()) as client:
                    self._setup(client)
                    plan = self._schedule()
                    # The days of load, then quiet days until everything has ended and
                    # retention has passed for the last jobs.
                    tail = (self.app.settings.job_retention_s // DAY_S + 2) * 1440
                    last = self.days * 1440 + tail
                    minutes = sorted(plan)
                    position, minute = 0, 0
                    while minute < last:
                        while position < len(minutes) and minutes[position] < minute:
                            position += 1
                        upcoming = minutes[position] if position < len(minutes) else last
                        if upcoming > minute and self._idle():
                            minute += self._skip_idle(client, min(upcoming, last) - minute)
                            continue
                        self._minute(client, plan.pop(minute, []))
                        minute += 1
                        if minute % 1440 == 0:
                            self._report_day(minute // 1440, started)
                    result = self._verdicts(client)
        finally:
            self.emu.close()
            if self.tmp is not None:
                self.tmp.cleanup()
        result["wall_s"] = round(time.perf_counter() - started, 2)
        return result
