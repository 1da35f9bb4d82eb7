"""The local runner's supervision pieces that need no child process: back-off, the lock."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from app.core.errors import RunnerError
from app.deploy.local.runner import (
    MEMBERS_LOCK_FILE,
    RESTART_BACKOFF_MAX_S,
    restart_delay,
    single_runner,
)


def test_restart_back_off_doubles_from_half_a_second_up_to_the_cap() -> None:
    assert [restart_delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert restart_delay(50) == RESTART_BACKOFF_MAX_S


def test_a_second_runner_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    with single_runner(tmp_path) as members:
        assert members == tmp_path / MEMBERS_LOCK_FILE
        refused = pytest.raises(
            RunnerError, match=r"another comfyui-saas dev \(pid \d+\) is already"
        )
        with refused, single_runner(tmp_path):
            pass
    with single_runner(tmp_path):  # released on exit
        pass


def test_a_runner_is_refused_while_a_child_of_an_earlier_one_holds_the_members_lock(
    tmp_path: Path,
) -> None:
    with single_runner(tmp_path):
        pass
    with open(tmp_path / MEMBERS_LOCK_FILE, "a+") as child:  # what each child holds
        fcntl.flock(child, fcntl.LOCK_SH)
        refused = pytest.raises(RunnerError, match="processes of an earlier comfyui-saas dev")
        with refused, single_runner(tmp_path):
            pass
    with single_runner(tmp_path):
        pass
