"""Fault drills against a real `comfyui-saas dev` and the ComfyUI double.

    python3 scripts/drills.py            # every drill, each kill 4 times (the acceptance)
    python3 scripts/drills.py --quick    # the short ones, once (what CI runs, ~60 s)

Prints one PASS/FAIL line per drill and, last, a JSON summary line; exits 1 if any drill
failed. Each drill talks to `dev` as a client would (HTTP, the Python client, signals to
its processes) against real far ends on 127.0.0.1 (tests/support/drill_peers.py: a slow
input origin, a webhook receiver that stalls or goes down) and reads the outcome from
the data folder's store. A job "ends right" when it completed, its outputs are stored
once (the stored keys are exactly the job's), exactly one POST of its webhook was
answered 2xx (every POST with the same webhook-id and a valid signature), its slot is
free, and that delivery came within RECOVERY_LIMIT_S of the fault.

* kill_{fetch,render,upload,notify,intake}_holder: kill -9 the worker that holds a job
  (a slow origin holds fetch, a slow node render, 200 outputs upload, a stalling
  receiver notify, a slow ComfyUI /object_info the queued request in intake); the job
  must end right without a restart of `dev` (the supervisor restarts the worker; the
  lease, the pending delivery or the intake marker brings the job back).
* storage_fault: the outputs folder read-only for 30 s (a bind mount; else the folder is
  replaced by a file) while jobs reach upload: every job ends right (retried), no client
  request answers 5xx.
* comfy_stopped: the ComfyUI double stopped mid-render for longer than the job's own
  timeout, then started again: the job ends right; the wait is renderer_wait_s.
* receiver_outage: the webhook receiver's port closed while the job ends, then open: the
  webhook is delivered on a retry, exactly once.
* cancel_during_render: DELETE while the prompt runs; the job ends cancelled, its view
  lists no outputs and nothing of it is stored.
* burst: 1,000 submissions (48 with --quick) from 8 threads against the per-user cap
  while nothing can finish: exactly the cap is admitted, the rest 429, no 5xx.
* kill_main: kill -9 of the main process alone: every child exits (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from standardwebhooks import Webhook  # noqa: E402

from app.adapters.storage.base import job_prefix  # noqa: E402
from app.clients.queue_client import Client  # noqa: E402
from app.core.config import Settings  # noqa: E402
from app.core.models import JobStatus  # noqa: E402
from app.engine.deps import Deps, build_deps  # noqa: E402
from tests.comfy_double import ComfyDouble  # noqa: E402
from tests.integration.deploy.local.test_supervisor import (  # noqa: E402
    WORKFLOW,
    Dev,
    group_members,
    wait_for,
)
from tests.support.drill_peers import InputServer, Post, Receiver, socket_owner  # noqa: E402

#: Shorter than the defaults so a drill takes seconds; the mechanisms are the same. The
#: far ends are plain http on 127.0.0.1, allowed here only.
DRILL_ENV = {
    "COMFYUI_SAAS_STAGE_LEASE_S": "10",
    "COMFYUI_SAAS_STAGE_LEASE_RENEW_S": "3",
    "COMFYUI_SAAS_WEBHOOK_TIMEOUT_S": "3",
    "COMFYUI_SAAS_WEBHOOK_RETRY_SCHEDULE_S": "2,4,8,16,30,60,60",
    "COMFYUI_SAAS_OBJECT_INFO_TTL_S": "2",
    "COMFYUI_SAAS_FETCH_ALLOW_HTTP": "true",
    "COMFYUI_SAAS_FETCH_ALLOW_CIDRS": "127.0.0.1/32",
}
RECOVERY_LIMIT_S = 60.0
#: Outputs of the upload drill's job: enough for an upload that lasts a while.
UPLOAD_BATCH = 200
#: Jobs in flight during the storage fault.
STORAGE_JOBS = 4
STORAGE_FAULT_S = 30.0
STARTED = time.monotonic()


@dataclass
class Result:
    drill: str
    ok: bool
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        facts = " ".join(f"{k}={v}" for k, v in self.detail.items())
        return f"{'PASS' if self.ok else 'FAIL'} {self.drill:<22} {self.seconds:6.1f} s  {facts}"


@contextmanager
def storage_down(folder: Path) -> Iterator[str]:
    """`folder` unwritable, even for root: a read-only bind mount, or (where mounting is
    not allowed) the folder moved away and a file put in its place. Restored on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "--bind", str(folder), str(folder)]
    if subprocess.run(mount, capture_output=True, check=False).returncode == 0:
        remount = ["mount", "-o", "remount,bind,ro", str(folder)]
        subprocess.run(remount, capture_output=True, check=False)
        try:
            yield "read-only-mount"
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True, check=False)
        return
    away = folder.with_name(folder.name + ".away")
    folder.rename(away)
    folder.write_text("the store is away for a drill\n")
    try:
        yield "folder-replaced-by-file"
    finally:
        folder.unlink()
        away.rename(folder)


def workflow(batch: int = 1, load: str | None = None) -> dict[str, dict[str, Any]]:
    """The drills' graph: a solid image (or an input, `load`) inverted, `batch` outputs."""
    graph: dict[str, dict[str, Any]] = json.loads(json.dumps(WORKFLOW))
    graph["1"]["inputs"]["batch_size"] = batch
    if load is not None:
        graph["1"] = {"class_type": "LoadImage", "inputs": {"image": load}}
    return graph


class Drills:
    def __init__(
        self, dev: Dev, deps: Deps, comfy: ComfyDouble, inputs: InputServer, receiver: Receiver
    ) -> None:
        self.dev, self.deps, self.comfy = dev, deps, comfy
        self.inputs, self.receiver = inputs, receiver

    # --- acting as a client ----------------------------------------------------------

    def request(self, **extra: Any) -> dict[str, Any]:
        """A job request with the drills' webhook (`extra`: graph, inputs, timeout)."""
        return {"workflow": WORKFLOW, "webhook_url": self.receiver.url("/hook")} | extra

    def submit(
        self, key: str | None = None, user: str = "ann", **extra: Any
    ) -> tuple[str, httpx.Response]:
        key = key or self.new_key()
        answer = httpx.post(
            f"{self.dev.url}/v1/jobs",
            json=self.request(**extra),
            headers={"Authorization": f"Bearer {key}", "X-User-ID": user},
            timeout=30,
        )
        return key, answer

    def new_key(self) -> str:
        return self.deps.tenants.create(f"d{time.monotonic_ns()}").api_key

    def job_id(self, answer: httpx.Response) -> str:
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    # --- reading the outcome -----------------------------------------------------------

    def ended_right(self, name: str, job_id: str, since: float, **expect: Any) -> Result:
        """The job completed, outputs stored once, one valid delivery, its slot free.

        `since` (unix seconds: a kill, a fault) to the delivery is the recovery time;
        `expect` adds facts that must hold (`epoch_at_least`).
        """
        job = wait_for(
            lambda: (
                (found := self.deps.jobs.find(job_id)) is not None and found.is_terminal and found
            ),
            RECOVERY_LIMIT_S + 60,
            f"{job_id} to end",
        )
        delivered = wait_for(
            lambda: self.receiver.delivered(job_id), RECOVERY_LIMIT_S + 30, "its webhook"
        )
        took = delivered[0].at - since
        slot_free = self._released_within(job_id, 10.0)
        prefix = job_prefix(job.tenant_id, job.user_id, job.id)
        stored = self.deps.objects.list_older_than(prefix, float("inf"))
        posts = self.receiver.posts(job_id)
        tenant = self.deps.tenants.get(job.tenant_id)
        assert tenant is not None
        signed = all(self._verified(tenant.webhook_secrets, p) for p in posts)
        facts: dict[str, Any] = {
            "status": job.status.value,
            "epoch": job.epoch,
            "outputs": len(job.outputs),
            "stored": len(stored),
            "posts": len(posts),
            "delivered": len(delivered),
            "slot_free": slot_free,
        }
        ok = (
            job.status is JobStatus.COMPLETED
            and bool(job.outputs)
            and sorted(o.key for o in job.outputs) == stored
            and len(delivered) == 1
            and len({p.headers["webhook-id"] for p in posts}) == 1
            and signed
            and slot_free
            and took < RECOVERY_LIMIT_S
            and job.epoch >= expect.get("epoch_at_least", 0)
        )
        return Result(name, ok, took, facts)

    @staticmethod
    def _verified(secrets: list[str], post: Post) -> bool:
        try:
            Webhook(secrets[0]).verify(post.body, post.headers)
        except Exception:  # noqa: BLE001 - any refusal is a failed drill, reported as such
            return False
        return True

    def _released_within(self, job_id: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while job_id in set(self.deps.jobs.active_ids()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _kill(self, name: str) -> float:
        os.kill(self.dev.worker_pids()[name], signal.SIGKILL)
        return time.time()

    # --- kill -9 of each stage's holder --------------------------------------------------

    def kill_fetch_holder(self) -> Result:
        path = f"/in/{time.monotonic_ns()}.png"
        self.inputs.hold(path)  # a slow origin: the download lasts while the hold does
        inputs = [{"name": "in.png", "url": self.inputs.url(path)}]
        job_id = self.job_id(self.submit(workflow=workflow(load="in.png"), inputs=inputs)[1])
        port = wait_for(lambda: self.inputs.trickling.get(path), 30, "the download to start")
        holder = socket_owner(self.dev.worker_pids("fetch"), port)
        assert holder is not None, "no fetch worker holds the download"
        killed = self._kill(holder)
        self.inputs.release(path)  # the origin is fast again for the retry
        result = self.ended_right("kill_fetch_holder", job_id, killed, epoch_at_least=1)
        result.detail["killed"] = holder
        return result

    def kill_render_holder(self) -> Result:
        self.comfy.node_delay_s = {"ImageInvert": 3.0}
        job_id = self.job_id(self.submit()[1])
        wait_for(lambda: self.comfy.running, 30, "the render to start")
        killed = self._kill("render-0")
        self.comfy.node_delay_s = {}
        return self.ended_right("kill_render_holder", job_id, killed, epoch_at_least=1)

    def kill_upload_holder(self) -> Result:
        # The kill must land mid-upload; a fast machine may store all the outputs between
        # two polls, and then the drill did not test anything: it tries again (at most 3).
        for attempt in range(1, 4):
            result = self._kill_upload_holder_once()
            result.detail["attempts"] = attempt
            if result.detail["stored_at_kill"] < UPLOAD_BATCH:
                break
        return result

    def _kill_upload_holder_once(self) -> Result:
        # Many outputs make a real, long upload; the first one stored means it is under way.
        key = self.new_key()
        tenant = self.deps.tenants.authenticate(key)
        assert tenant is not None
        job_id = self.job_id(self.submit(key, workflow=workflow(batch=UPLOAD_BATCH))[1])
        prefix = f"outputs/{tenant.id}/"
        wait_for(
            lambda: self.deps.objects.list_older_than(prefix, float("inf")),
            60,
            "the upload to start",
        )
        killed = self._kill("upload-0")
        partial = len(self.deps.objects.list_older_than(prefix, float("inf")))
        result = self.ended_right("kill_upload_holder", job_id, killed, epoch_at_least=1)
        result.detail["stored_at_kill"] = partial
        # The killed worker's half-written temporary file, if any, is the store's to sweep.
        tmp = self.deps.settings.local_store_dir / ".tmp"
        result.detail["tmp_left"] = len(list(tmp.iterdir())) if tmp.is_dir() else 0
        result.ok = result.ok and partial < UPLOAD_BATCH
        return result

    def kill_notify_holder(self) -> Result:
        self.receiver.hold_next()  # a slow receiver: the POST stays unanswered
        job_id = self.job_id(self.submit()[1])
        port = wait_for(lambda: self.receiver.holding, 60, "the webhook POST to arrive")
        holder = socket_owner(self.dev.worker_pids("notify"), port)
        assert holder is not None, "no notify worker holds the POST"
        killed = self._kill(holder)
        result = self.ended_right("kill_notify_holder", job_id, killed)
        result.ok = result.ok and result.detail["posts"] == 2
        return result

    def kill_intake_holder(self) -> Result:
        # Python-client path: intake asks a slow ComfyUI for its node catalog (the
        # catalog is kept only OBJECT_INFO_TTL_S in the drills), holding the request.
        self.comfy.object_info_delay_s = 60.0
        ttl = float(DRILL_ENV["COMFYUI_SAAS_OBJECT_INFO_TTL_S"])
        wait_for(
            lambda: self.deps.catalog.load(ttl, self.deps.clock()) is None,
            ttl + 10,
            "the published catalog to age",
        )
        client = Client(self.deps, self.new_key(), "ann")
        # An earlier drill's request may still be waiting there (its asker was killed).
        before = self.comfy.object_info_in_flight
        job_id = client.enqueue(self.request())
        wait_for(lambda: self.comfy.object_info_in_flight > before, 30, "intake to ask ComfyUI")
        killed = self._kill("intake-0")
        self.comfy.object_info_delay_s = 0.0
        result = self.ended_right("kill_intake_holder", job_id, killed)
        # The request in hand was lost with the worker and came back from its marker.
        recovered = bool(self.dev.events("intake_recovered", job_id=job_id))
        result.detail["readmitted"] = recovered
        result.ok = result.ok and recovered
        return result

    # --- outages ------------------------------------------------------------------------

    def storage_fault(self, fault_s: float) -> Result:
        """The outputs folder unwritable for `fault_s` while jobs reach upload."""
        self.comfy.node_delay_s = {"ImageInvert": 1.0}
        key = self.new_key()
        jobs = [self.job_id(self.submit(key)[1]) for _ in range(STORAGE_JOBS)]
        wait_for(lambda: self.comfy.running, 30, "the first render to start")
        codes: list[int] = []
        started = time.time()
        with storage_down(self.deps.settings.local_store_dir) as how:
            while time.time() - started < fault_s:
                codes += self._client_calls(key, jobs)
                time.sleep(0.5)
        restored = time.time()
        self.comfy.node_delay_s = {}
        results = [self.ended_right("storage_fault", j, restored) for j in jobs]
        retries = len(self.dev.events("stage_retry_scheduled", code="storage_unavailable"))
        server_errors = sum(1 for c in codes if c >= 500)
        detail = {
            "fault": how,
            "jobs": len(jobs),
            "completed": sum(r.detail["status"] == "completed" for r in results),
            "retries": retries,
            "requests": len(codes),
            "5xx": server_errors,
        }
        ok = all(r.ok for r in results) and retries > 0 and not server_errors
        return Result("storage_fault", ok, max(r.seconds for r in results), detail)

    def _client_calls(self, key: str, jobs: list[str]) -> list[int]:
        headers = {"Authorization": f"Bearer {key}", "X-User-ID": "ann"}
        codes = []
        for job_id in jobs:
            view = httpx.get(f"{self.dev.url}/v1/jobs/{job_id}", headers=headers, timeout=30)
            codes.append(view.status_code)
            for output in view.json().get("outputs", []) if view.status_code == 200 else []:
                codes.append(httpx.get(output["url"], timeout=30).status_code)
        return codes

    def comfy_stopped(self, down_s: float) -> Result:
        """ComfyUI stopped mid-render for longer than the job's own timeout, then back."""
        self.comfy.node_delay_s = {"ImageInvert": 2.0}
        timeout_s = int(down_s) - 5  # the wait must not count against it
        job_id = self.job_id(self.submit(timeout_s=timeout_s)[1])
        wait_for(lambda: self.comfy.running, 30, "the render to start")
        port = int(self.comfy.url.rsplit(":", 1)[1])
        self.comfy.stop()
        stopped = time.time()
        time.sleep(down_s)
        self.comfy = ComfyDouble(self.comfy.root)
        self.comfy.cache = False
        self.comfy.start(port)
        result = self.ended_right("comfy_stopped", job_id, stopped)
        job = self.deps.jobs.get(job_id)
        result.detail |= {"timeout_s": timeout_s, "renderer_wait_s": round(job.renderer_wait_s)}
        result.ok = result.ok and job.renderer_wait_s > timeout_s
        # Counted from the restart: the down time itself is the drill, not a recovery.
        result.seconds -= down_s
        return result

    def receiver_outage(self, down_s: float) -> Result:
        self.receiver.down()
        job_id = self.job_id(self.submit()[1])
        time.sleep(down_s)
        self.receiver.up()
        back = time.time()
        result = self.ended_right("receiver_outage", job_id, back)
        delivery = self.deps.deliveries.get(job_id)
        attempts = len(delivery.attempts) if delivery else 0
        result.detail |= {"attempts": attempts}
        result.ok = result.ok and attempts >= 2
        return result

    def cancel_during_render(self) -> Result:
        self.comfy.node_delay_s = {"ImageInvert": 5.0}
        key, answer = self.submit()
        job_id = answer.json()["id"]
        wait_for(lambda: self.comfy.running, 30, "the render to start")
        started = time.monotonic()
        cancel = httpx.delete(
            f"{self.dev.url}/v1/jobs/{job_id}",
            headers={"Authorization": f"Bearer {key}", "X-User-ID": "ann"},
            timeout=30,
        )
        wait_for(lambda: not self.comfy.running, 30, "the prompt to stop")
        took = time.monotonic() - started
        self.comfy.node_delay_s = {}
        job = self.deps.jobs.get(job_id)
        prefix = job_prefix(job.tenant_id, job.user_id, job.id)
        stored = self.deps.objects.list_older_than(prefix, float("inf"))
        ok = cancel.status_code == 200 and job.status is JobStatus.CANCELLED and not stored
        detail = {"status": job.status.value, "outputs": len(job.outputs), "stored": len(stored)}
        return Result("cancel_during_render", ok, took, detail)

    def burst(self, total: int) -> Result:
        # Nothing may finish during the burst (1,000 requests take minutes on a loaded
        # machine), or a freed slot admits one more: the render in hand takes 15 min.
        self.comfy.node_delay_s = {"ImageInvert": 900.0}
        key = self.deps.tenants.create(f"burst{time.monotonic_ns()}").api_key
        codes: list[int] = []
        lock = threading.Lock()

        def worker(count: int) -> None:
            for _ in range(count):
                _, answer = self.submit(key, user="burst")
                with lock:
                    codes.append(answer.status_code)

        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(total // 8,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - started
        admitted = codes.count(202)
        cap = Settings().max_active_jobs_per_user
        self._cancel_all(key, "burst")
        self.comfy.node_delay_s = {}
        server_errors = sum(1 for c in codes if c >= 500)
        ok = admitted == cap and codes.count(429) == len(codes) - cap and not server_errors
        detail = {"sent": len(codes), "admitted": admitted, "cap": cap, "5xx": server_errors}
        return Result("burst", ok, took, detail)

    def _cancel_all(self, key: str, user: str) -> None:
        headers = {"Authorization": f"Bearer {key}", "X-User-ID": user}
        jobs = httpx.get(f"{self.dev.url}/v1/jobs?status=running", headers=headers, timeout=30)
        queued = httpx.get(f"{self.dev.url}/v1/jobs?status=queued", headers=headers, timeout=30)
        for view in jobs.json()["jobs"] + queued.json()["jobs"]:
            httpx.delete(f"{self.dev.url}/v1/jobs/{view['id']}", headers=headers, timeout=30)

    def kill_main(self) -> Result:
        children = set(self.dev.worker_pids().values())
        started = time.monotonic()
        os.kill(self.dev.process.pid, signal.SIGKILL)
        try:
            wait_for(lambda: not group_members(self.dev.pgid), 30, "every child to exit")
            ok = True
        except AssertionError:
            ok = False
        took = time.monotonic() - started
        left = len(group_members(self.dev.pgid))
        return Result("kill_main", ok, took, {"children": len(children), "left": left})


KILLS = ("fetch", "render", "upload", "notify", "intake")


def plan(drills: Drills, quick: bool) -> list[tuple[str, Callable[[], Result]]]:
    """The drills in order; --quick: the short ones, each once (CI's budget is ~90 s)."""
    steps: list[tuple[str, Callable[[], Result]]] = []
    for stage in ("render", "notify") if quick else KILLS:
        name = f"kill_{stage}_holder"
        steps += [(name, getattr(drills, name))] * (1 if quick else 4)
    if not quick:
        steps.append(("storage_fault", lambda: drills.storage_fault(STORAGE_FAULT_S)))
        steps.append(("comfy_stopped", lambda: drills.comfy_stopped(25.0)))
    steps.append(("receiver_outage", lambda: drills.receiver_outage(3.0)))
    steps.append(("cancel_during_render", drills.cancel_during_render))
    steps.append(("burst", lambda: drills.burst(48 if quick else 1000)))
    steps.append(("kill_main", drills.kill_main))  # last: it ends this dev
    return steps


def run(quick: bool, work: Path, only: set[str] | None = None) -> list[Result]:
    comfy = ComfyDouble(work / "comfy")
    comfy.cache = False  # every drill submits the same graph: each must really run
    comfy.start()
    inputs, receiver = InputServer(), Receiver()
    env = DRILL_ENV | {"COMFYUI_SAAS_FETCH_ALLOWED_PORTS": f"{inputs.port},{receiver.port}"}
    dev = Dev(work / "data", comfy.url, work / "dev.log", 5.0, extra_env=env)
    results: list[Result] = []
    # The drills' own client (the Python-client path) checks URLs as dev does.
    os.environ.update(env)
    deps = build_deps(Settings(data_dir=work / "data"))
    # The drills' client checks graphs before queueing, against the catalog dev's intake
    # publishes: it never asks ComfyUI itself (in kill_intake_holder it would wait on the
    # slow ComfyUI in enqueue instead of the intake worker it means to hold).
    deps.catalog_from_comfy = False
    drills = Drills(dev, deps, comfy, inputs, receiver)
    try:
        dev.wait_ready()
        print(f"dev ready in {time.monotonic() - STARTED:.1f} s", flush=True)
        for name, drill in plan(drills, quick):
            if only and name not in only:
                continue
            began = time.monotonic()
            # A drill that failed half-way may have left the double slow.
            drills.comfy.node_delay_s, drills.comfy.object_info_delay_s = {}, 0.0
            try:
                result = drill()
            except Exception as exc:  # noqa: BLE001 - any failure is this drill's FAIL line
                error = f"{type(exc).__name__}: {exc}"
                result = Result(name, False, time.monotonic() - began, {"error": error})
            results.append(result)
            print(result.line(), flush=True)
    finally:
        dev.kill_group()
        drills.comfy.stop()  # the one running now (comfy_stopped starts a new one)
        inputs.close()
        receiver.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one of each drill (CI)")
    parser.add_argument("--only", default="", help="comma-separated drill names to run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="drills-") as work:
        only = {name for name in args.only.split(",") if name}
        results = run(args.quick, Path(work), only or None)
    summary = {
        "seconds": round(time.monotonic() - STARTED, 1),
        "drills": [
            asdict(r) | {"detail": {k: str(v) for k, v in r.detail.items()}} for r in results
        ],
        "passed": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
    }
    print(json.dumps(summary))
    return 0 if summary["failed"] == 0 and results else 1


if __name__ == "__main__":
    sys.exit(main())
