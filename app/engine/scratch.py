"""The per-job scratch folder that fetch, render and upload share.

Locally it is a folder under the data directory; on Modal it is a `modal.Volume`
mounted at the same path in every stage's container, which is why the stages call
`deps.scratch_commit()` after writing and `deps.scratch_reload()` before reading.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from app.adapters.comfy.job_files import remove_later
from app.core.ids import inside
from app.engine.deps import Deps

INPUTS = "inputs"
#: Staged outputs carry this key prefix until upload gives them their storage key.
SCRATCH_KEY_PREFIX = "scratch:"


def job_folder(deps: Deps, job_id: str) -> Path:
    """The job's scratch folder (not created)."""
    return inside(deps.settings.work_dir, job_id)


def inputs_folder(deps: Deps, job_id: str) -> Path:
    return job_folder(deps, job_id) / INPUTS


def outputs_folder(deps: Deps, job_id: str) -> Path:
    """Where render stages the job's outputs: the job folder itself.

    A folder of their own cost a mkdir and an rmdir per job, each a new inode on the hot
    path (ext4 spent about a fifth of the upload worker's CPU allocating inodes under this
    churn; `perf`, issue 13). Staged names (`NN-name`) never clash with `inputs/`, and an
    output staged before (key `scratch:outputs/NN-name`) still resolves.
    """
    return job_folder(deps, job_id)


def drop_job_folder(deps: Deps, job_id: str) -> None:
    """Remove the job's scratch folder.

    Locally off the caller's path: renamed away at once and deleted on a background
    thread (an `rmtree` here cost the upload worker ~5 ms of wall time per job on this
    disk, on its serial chain; py-spy, issue 13). On Modal the folder is on the shared
    volume, whose commits must not race a deletion still running: removed in place.
    """
    folder = job_folder(deps, job_id)
    if deps.jobs.concurrent:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        remove_later(folder)
