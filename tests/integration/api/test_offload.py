"""Where the ingress runs a route's store work: on the event loop where store calls are
local (no thread hand-offs, issue 13), on the thread pool where they are Modal round trips
(a blocked loop would stall every other request of the container)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from app.api.offload import store_work
from app.core.config import Settings
from app.engine.deps import Deps
from app.store.backends.memory import MemoryBackend


class RoundTripBackend(MemoryBackend):
    """A backend whose calls count as round trips, as `ModalBackend`'s do."""

    concurrent_calls = True


def thread_of_work(
    backend: MemoryBackend, tmp_path: Path, *, may_block: bool = False
) -> tuple[int, int]:
    deps = Deps(settings=Settings(data_dir=tmp_path / "data"), backend=backend)

    async def main() -> tuple[int, int]:
        loop_thread = threading.get_ident()
        return loop_thread, await store_work(deps, threading.get_ident, may_block=may_block)

    return asyncio.run(main())


def test_local_store_work_runs_on_the_event_loop(tmp_path: Path) -> None:
    loop_thread, work_thread = thread_of_work(MemoryBackend(), tmp_path)
    assert work_thread == loop_thread


def test_round_trip_store_work_runs_on_the_thread_pool(tmp_path: Path) -> None:
    loop_thread, work_thread = thread_of_work(RoundTripBackend(), tmp_path)
    assert work_thread != loop_thread


def test_local_work_that_may_block_runs_on_the_thread_pool(tmp_path: Path) -> None:
    loop_thread, work_thread = thread_of_work(MemoryBackend(), tmp_path, may_block=True)
    assert work_thread != loop_thread
