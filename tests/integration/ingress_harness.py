"""A local deployment for ingress, client and CLI tests: SQLite state, a folder store, two
tenants, a published node catalog, and a real uvicorn server in a thread when needed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from app.adapters.comfy import catalog as node_catalog
from app.adapters.storage import LocalStore, output_key
from app.adapters.storage.signing import load_signing_key
from app.core.config import Settings
from app.core.models import JobStatus, OutputRef
from app.engine.deps import Deps
from app.store.backends.sqlite import SqliteBackend
from tests.state_helpers import FakeClock
from tests.support.waiting import wait_until

#: Just enough of ComfyUI's /object_info for the test workflows.
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
    "LoadImage": {
        "input": {"required": {"image": [["a.png"], {}]}},
        "output": ["IMAGE", "MASK"],
        "output_node": False,
    },
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}},
        "output": [],
        "output_node": True,
    },
}

WORKFLOW: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}

USERS = ("alice", "bob")


@dataclass
class TenantKeys:
    id: str
    name: str
    api_key: str


@dataclass
class Harness:
    """Deps over a temporary data folder, with two tenants."""

    settings: Settings
    deps: Deps
    clock: FakeClock
    acme: TenantKeys
    beta: TenantKeys

    def headers(self, tenant: TenantKeys, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tenant.api_key}", "X-User-ID": user}

    def complete(self, job_id: str, files: dict[str, bytes]) -> list[OutputRef]:
        """Store outputs and decide `completed`, as the upload stage would."""
        job = self.deps.jobs.get(job_id)
        refs = []
        for index, (name, data) in enumerate(files.items()):
            key = output_key(job.tenant_id, job.user_id, job.id, index, name)
            size = self.deps.objects.put_bytes(key, data, "image/png")
            refs.append(OutputRef(filename=name, content_type="image/png", size=size, key=key))
        assert self.deps.jobs.finish(job_id, JobStatus.COMPLETED, outputs=refs)
        return refs


def make_harness(settings: Settings, *, acme_cap: int = 5, beta_rate: int = 0) -> Harness:
    """A fresh deployment rooted in `settings.data_dir`."""
    clock = FakeClock(time.time())
    deps = Deps(settings=settings, backend=SqliteBackend(settings.state_db_path), clock=clock)
    # Links signed with the test's clock, so tests can move time past their expiry.
    deps.objects = LocalStore(
        settings.local_store_dir,
        settings.public_url,
        load_signing_key(settings.signing_key, settings.data_dir),
        clock=clock,
    )
    node_catalog.publish(deps.backend.kv(node_catalog.CATALOG_DICT), OBJECT_INFO, clock())
    acme = deps.tenants.create("acme", max_active_jobs_per_user=acme_cap)
    beta = deps.tenants.create("beta", rate_per_minute=beta_rate or None)
    return Harness(
        settings=settings,
        deps=deps,
        clock=clock,
        acme=TenantKeys(acme.tenant.id, "acme", acme.api_key),
        beta=TenantKeys(beta.tenant.id, "beta", beta.api_key),
    )


def free_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port (uvicorn takes it over)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def serve_in_thread(app: Any, sock: socket.socket, timeout_s: float = 10.0) -> Iterator[str]:
    """Run `app` under a real uvicorn on `sock` in a thread; yields its base URL."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        return bool(server.started)

    wait_until(started, timeout_s=timeout_s, interval_s=0.01, what="uvicorn started")
    host, port = sock.getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
