"""Where a job's files live on the ComfyUI side, which reported files are its own, and wiping.

Render puts a job's inputs under `input/<job id>/` and every `filename_prefix` under
`<job id>/<run token>-`, so a job's saved files are `output/<job id>/<token>-...`.
ComfyUI's history is still not trusted to name only those: `owned_outputs` keeps a
reported file only if it lies in the job's folder with this run's token (or is a
`PreviewImage` preview, which ComfyUI always names `ComfyUI_temp_<5 letters>_<n>_` in the
temp root), so a node reporting another job's file delivers nothing.

Nothing a job wrote may survive it. ComfyUI has no API that deletes input or output
files, so wiping needs ComfyUI's folders on this machine: `comfyui_base_dir` when it is
set, or else the folders a ComfyUI on a loopback address reports about itself
(`--base-directory`, `--input/--output/--temp-directory` in `/system_stats` argv, the base
folder of `/internal/folder_paths`). `resolve_dirs` finds them; `wipe_job` removes the
job's folders and the previews it wrote.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.adapters.comfy.messages import ComfyOutput
from app.core.errors import InvalidRequest
from app.core.ids import inside

__all__ = [
    "ComfyDirs",
    "LaterRemover",
    "dirs_from_server",
    "owned_outputs",
    "remove_later",
    "wipe_job",
]

#: PreviewImage's own naming (`"_temp_" + 5 random letters`, then ComfyUI's counter).
_PREVIEW = re.compile(r"ComfyUI_temp_[a-z]{5}_\d{5}_\.[A-Za-z0-9]{1,8}")
_KINDS = ("input", "output", "temp")


@dataclass(frozen=True, slots=True)
class ComfyDirs:
    """ComfyUI's input, output and temp folders on this machine."""

    input: Path
    output: Path
    temp: Path

    @classmethod
    def under(cls, base: str | Path) -> ComfyDirs:
        root = Path(base)
        return cls(input=root / "input", output=root / "output", temp=root / "temp")

    def of(self, kind: str) -> Path:
        return {"input": self.input, "output": self.output, "temp": self.temp}[kind]


def dirs_from_server(argv: Sequence[str], folder_paths: Mapping[str, object]) -> ComfyDirs | None:
    """The folders a ComfyUI reports about itself (pure); None if it does not say.

    `argv` is `/system_stats`' `system.argv`; `folder_paths` is `/internal/folder_paths`,
    whose `custom_nodes` entry sits directly in ComfyUI's base folder.
    """
    flags = _flags(argv)
    base = flags.get("--base-directory")
    if base is None:
        custom = folder_paths.get("custom_nodes")
        first = custom[0] if isinstance(custom, list) and custom else None
        if isinstance(first, str) and Path(first).is_absolute():
            base = str(Path(first).parent)
    if base is None or not Path(base).is_absolute():
        return None
    default = ComfyDirs.under(base)
    chosen = {kind: flags.get(f"--{kind}-directory") for kind in _KINDS}
    if any(value is not None and not Path(value).is_absolute() for value in chosen.values()):
        return None  # relative to a working folder we cannot know
    temp = chosen["temp"]
    return ComfyDirs(
        input=Path(chosen["input"] or default.input),
        output=Path(chosen["output"] or default.output),
        # ComfyUI puts its temp folder *inside* --temp-directory (main.py adds "temp").
        temp=Path(temp) / "temp" if temp else default.temp,
    )


def _flags(argv: Sequence[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    for index, arg in enumerate(argv):
        if "=" in arg and arg.startswith("--"):
            name, value = arg.split("=", 1)
            flags[name] = value
        elif arg.startswith("--") and index + 1 < len(argv):
            flags[arg] = argv[index + 1]
    return flags


def owned_outputs(
    outputs: Sequence[ComfyOutput], job_id: str, token: str
) -> tuple[list[ComfyOutput], list[ComfyOutput]]:
    """`(kept, dropped)`: the reported files that are this run's own, and the others (pure)."""
    kept: list[ComfyOutput] = []
    dropped: list[ComfyOutput] = []
    for output in outputs:
        (kept if _is_owned(output, job_id, token) else dropped).append(output)
    return kept, dropped


def _is_owned(output: ComfyOutput, job_id: str, token: str) -> bool:
    if output.type not in ("output", "temp") or not _plain(output.filename):
        return False
    if output.type == "temp" and output.subfolder == "":
        return _PREVIEW.fullmatch(output.filename) is not None
    parts = PurePosixPath(output.subfolder).parts if output.subfolder else ()
    if not parts or parts[0] != job_id or not all(_plain(p) for p in parts):
        return False
    return output.filename.startswith(f"{token}-")


def _plain(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def copy_output(dirs: ComfyDirs, output: ComfyOutput, job_id: str, dest: Path) -> int | None:
    """Copy one of the job's own outputs straight from ComfyUI's folder to `dest`.

    Its size, or None where it cannot be read here (ComfyUI on another machine or in
    another file system: the caller downloads it with `GET /view`). Saves that request's
    round trip on both sides (about 2.5 ms a file against the double, issue 13). Only a
    file under the job's own folder (`owned_outputs`' rule for a saved file, not a root
    preview), read through no symlink: the folders must resolve to where they should.
    """
    parts = PurePosixPath(output.subfolder).parts if output.subfolder else ()
    if output.type not in ("output", "temp") or not _plain(output.filename):
        return None
    if not parts or parts[0] != job_id or not all(_plain(part) for part in parts):
        return None
    root = dirs.of(output.type)
    try:
        source = inside(root, "/".join((*parts, output.filename)))
        if source.parent.resolve() != inside(root.resolve(), "/".join(parts)):
            return None  # a linked folder on the way
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except (InvalidRequest, OSError):
        return None
    partial = dest.with_name(dest.name + ".part")
    try:
        with os.fdopen(fd, "rb") as src, partial.open("wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
            size = out.tell()
        partial.replace(dest)
    except OSError:
        partial.unlink(missing_ok=True)
        return None
    return size


def wipe_job(
    dirs: ComfyDirs,
    job_id: str,
    outputs: Sequence[ComfyOutput] = (),
    *,
    remove: Callable[[Path], None] | None = None,
) -> int:
    """Remove the job's input/output/temp folders and the previews it wrote; count removed.

    `remove` deletes one folder (default: at once; the render stage passes `remove_later`).
    """
    removed = 0
    for kind in _KINDS:
        folder = inside(dirs.of(kind), job_id)
        if folder.exists():
            (remove or _remove_now)(folder)
            removed += 1
    for output in outputs:
        if output.type == "temp" and output.subfolder == "":
            try:
                path = inside(dirs.temp, output.filename)
            except InvalidRequest:
                continue
            if path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _remove_now(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


#: Where `remove_later` parks a folder: a hidden sibling no job id or workflow can name.
_PARKED = ".wiped-"


class LaterRemover:
    """Takes a folder out of the way at once and deletes it on one background thread.

    `rmtree` of a job's ComfyUI folders was the render worker's hottest function under
    load (py-spy, issue 13), on its serial chain per job. A rename within the same folder
    is one system call: the job's folder is gone when `__call__` returns (nothing can
    find it under the job's name), and its files go a moment later. A folder parked by a
    process that died before deleting it is deleted by the next process that parks one
    beside it. A rename that fails deletes at once, as before.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Path] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._swept: set[Path] = set()

    def __call__(self, folder: Path) -> None:
        parked = folder.with_name(f"{_PARKED}{uuid.uuid4().hex}")
        try:
            folder.rename(parked)
        except OSError:
            _remove_now(folder)
            return
        with self._lock:
            if folder.parent not in self._swept:  # leftovers of a process that died
                self._swept.add(folder.parent)
                for old in folder.parent.glob(f"{_PARKED}*"):
                    if old != parked:
                        self._queue.put(old)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="comfy-wipe", daemon=True)
                self._thread.start()
        self._queue.put(parked)

    def _work(self) -> None:
        while True:
            folder = self._queue.get()
            try:
                _remove_now(folder)
            finally:
                self._queue.task_done()

    def settle(self) -> None:
        """Wait until every parked folder is deleted (tests; a clean shutdown)."""
        self._queue.join()


#: The process's remover (one thread for every render of the process).
remove_later = LaterRemover()
