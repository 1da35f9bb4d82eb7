"""`modal.Volume` as a container sees it (modal 1.6.4 `modal/volume.py`).

* "you need to explicitly reload the volume to see changes made since it was mounted.
  Similarly, you need to explicitly commit any changes you make to the volume for the
  changes to become visible outside the current container" (volume.py:492-494). Each
  emulated container gets its own real directory holding the volume as of the container's
  start or its last `reload()`; code reads and writes files there with plain `open()`.
* `commit()` publishes this container's changes (files written or deleted since its view
  was taken); "Last write wins in case of concurrent modification of the same file"
  (volume.py:496-498). After a successful commit the SDK reloads too unless the server says
  `skip_reload` (volume.py:900-904); the emulator reloads (`commit_reloads=True`).
* "Volumes can only be reloaded if there are no open files for the volume" (volume.py:503,
  917). The emulator finds open files the way the SDK's own error annotation does
  (`_open_files_error_annotation`, volume.py:1725: `/proc/self/fd` links and the cwd) and
  raises the SDK's `RuntimeError` with the server's text, e.g.
  "there are open files preventing the operation: path out.png is open" (volume.py:926-935;
  full text as printed in modal-labs/modal-client PR #1669).
* "Any uncommitted changes ... may implicitly be committed when reloading" (volume.py:915):
  a reload publishes first.
* `commit()`/`reload()` "Must be called inside a container that mounts the Volume"
  (volume.py:893): outside one the emulator raises RuntimeError.
* A container that exits normally commits (the runtime's `volume_commit` at shutdown,
  `_runtime/user_code_imports.py:109`); one that is killed (cancel with `max_inputs > 1`,
  crash) loses what it did not commit.
"""

from __future__ import annotations

import os
import shutil
import threading
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

import modal
from modal.exception import NotFoundError

from tests.modal_emulator.context import current_input
from tests.modal_emulator.sdk import sdk_method

if TYPE_CHECKING:
    from tests.modal_emulator.emulator import ModalEmulator
    from tests.modal_emulator.ledger import Ledger

OPEN_FILES = "there are open files preventing the operation"
_ids = count(1)


class VolumeStore:
    """The committed, durable state of one named Volume: relative path -> bytes."""

    def __init__(self, name: str, ledger: Ledger) -> None:
        self.name = name
        self.object_id = f"vo-emu{next(_ids):06d}"
        self.ledger = ledger
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.version = 0

    def snapshot(self) -> dict[str, bytes]:
        with self.lock:
            return dict(self.files)


def _scan(root: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    if not root.exists():
        return found
    for path in root.rglob("*"):
        if path.is_file():
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def open_files_under(root: Path) -> list[str]:
    """Volume-relative paths of files this process has open under `root` (Linux), and cwd."""
    # Plain strings, not Paths: this runs on every reload and commit of a month.
    base = os.path.realpath(root)
    prefix = base.rstrip(os.sep) + os.sep
    found: list[str] = []
    fd_dir = "/proc/self/fd"
    if os.path.isdir(fd_dir):
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target == base or target.startswith(prefix):
                rel = Path(target).relative_to(base).as_posix()
                found.append(f"path {rel} is open")
    try:
        cwd = os.path.realpath(os.getcwd())
        if cwd == base or cwd.startswith(prefix):
            found.append("cwd is inside the volume")
    except OSError:
        pass
    return sorted(set(found))


class VolumeView:
    """One container's copy of a volume, in a real directory."""

    def __init__(self, store: VolumeStore, root: Path, *, read_only: bool = False) -> None:
        self.store = store
        self.root = root
        self.read_only = read_only
        self.base: dict[str, bytes] = {}
        self.pull()

    def pull(self) -> None:
        """Make the directory equal to the committed state (the view's new base)."""
        committed = self.store.snapshot()
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        for rel, data in committed.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.base = committed

    def publish(self) -> int:
        """Apply this container's changes since its base to the committed state."""
        if self.read_only:
            return 0
        current = _scan(self.root)
        changed = {rel: data for rel, data in current.items() if self.base.get(rel) != data}
        deleted = [rel for rel in self.base if rel not in current]
        with self.store.lock:
            self.store.files.update(changed)
            for rel in deleted:
                self.store.files.pop(rel, None)
            if changed or deleted:
                self.store.version += 1
        self.base = {**{k: v for k, v in self.base.items() if k not in deleted}, **changed}
        return len(changed) + len(deleted)

    def check_no_open_files(self) -> None:
        blockers = open_files_under(self.root)
        if blockers:
            raise RuntimeError(f"{OPEN_FILES}: {blockers[0]}")

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class EmulatedVolume:
    """What `modal.Volume.from_name(...)` returns under the emulator."""

    def __init__(
        self,
        server: ModalEmulator,
        name: str,
        *,
        environment_name: str | None,
        create_if_missing: bool,
        read_only: bool = False,
    ) -> None:
        self._server = server
        self._name = name
        self._environment_name = environment_name
        self._create_if_missing = create_if_missing
        self._read_only = read_only

    @property
    def name(self) -> str:
        return self._name

    def store(self) -> VolumeStore:
        found = self._server.find_volume(
            self._name, self._environment_name, self._create_if_missing
        )
        if found is None:
            raise NotFoundError(f"Volume '{self._name}' not found")
        return found

    @property
    def object_id(self) -> str:
        return self.store().object_id

    @sdk_method(modal.Volume)
    def read_only(self) -> EmulatedVolume:
        return EmulatedVolume(
            self._server,
            self._name,
            environment_name=self._environment_name,
            create_if_missing=self._create_if_missing,
            read_only=True,
        )

    def _view(self, op: str) -> VolumeView:
        ctx = current_input()
        view = None if ctx is None else ctx.container.view_of(self._name)
        if view is None:
            raise RuntimeError(
                f"Volume.{op}() must be called inside a container that mounts the Volume"
            )
        return view

    @sdk_method(modal.Volume)
    def commit(self) -> None:
        view = self._view("commit")
        ledger = view.store.ledger
        with ledger.rpc("volume", self._name, "commit"):
            view.publish()
        if self._server.commit_reloads:
            with ledger.rpc("volume", self._name, "reload"):
                view.check_no_open_files()
                view.pull()

    @sdk_method(modal.Volume)
    def reload(self) -> None:
        view = self._view("reload")
        with view.store.ledger.rpc("volume", self._name, "reload"):
            view.check_no_open_files()
            view.publish()  # "uncommitted changes ... may implicitly be committed"
            view.pull()
