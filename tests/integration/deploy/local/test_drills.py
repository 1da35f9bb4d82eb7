"""CI runs the short fault drills (`scripts/drills.py --quick`) against a real `dev`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT


@pytest.mark.timeout(600)
def test_the_quick_drills_pass() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_SAAS_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "drills.py"), "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,  # the script kills the dev it started in a finally
        check=False,
    )
    print(done.stdout)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    names = {d["drill"] for d in summary["drills"]}
    assert names == {
        "kill_render_holder",
        "kill_notify_holder",
        "receiver_outage",
        "cancel_during_render",
        "burst",
        "kill_main",
    }
    assert summary["failed"] == 0
