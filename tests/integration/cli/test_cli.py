"""The `comfyui-saas` command line: operator commands on the backend, job commands over HTTP
against a real uvicorn server in a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner, Result

from app.api.ingress import create_app
from app.cli.main import cli
from app.core.config import get_settings
from app.core.models import Job, JobStatus, Stage
from app.engine.events import record_event
from tests.integration.ingress_harness import (
    WORKFLOW,
    Harness,
    free_socket,
    make_harness,
    serve_in_thread,
)
from tests.support.settings import SettingsFactory

#: The harness behind a live server, and the server's base URL.
Served = tuple[Harness, str]


@pytest.fixture
def served(
    settings_factory: SettingsFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Served]:
    sock = free_socket()
    port = sock.getsockname()[1]
    settings = settings_factory(public_url=f"http://127.0.0.1:{port}")
    harness = make_harness(settings)
    # The CLI reads its settings from the environment, like any user's shell.
    monkeypatch.setenv("COMFYUI_SAAS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("COMFYUI_SAAS_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("COMFYUI_SAAS_API_KEY", harness.acme.api_key)
    get_settings.cache_clear()
    with serve_in_thread(create_app(harness.deps), sock) as base_url:
        yield harness, base_url
    get_settings.cache_clear()


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(WORKFLOW))
    return path


def run(*args: str) -> Result:
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        # The CLI points logs at the runner's stderr; the server thread must not keep it.
        structlog.reset_defaults()


def assert_failed(result: Result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# ---- tenants -----------------------------------------------------------------------------


def test_tenant_create_list_keys_and_revoke(served: Served) -> None:
    harness, _ = served
    # Given a new tenant made on the command line
    made = run(
        "tenant", "create", "gamma", "--max-active-jobs-per-user", "2", "--rate-per-minute", "30"
    )
    assert made.exit_code == 0, made.output
    key = next(line.split()[-1] for line in made.stdout.splitlines() if line.startswith("api key:"))
    secret = next(
        line.split()[-1] for line in made.stdout.splitlines() if line.startswith("webhook secret:")
    )
    assert secret.startswith("whsec_")
    # Then its key authenticates, and it is listed with its limits
    tenant = harness.deps.tenants.authenticate(key)
    assert tenant is not None and tenant.name == "gamma"
    listed = run("tenant", "list")
    line = next(row for row in listed.stdout.splitlines() if row.startswith("gamma"))
    assert line.split()[2:6] == ["2", "-", "30", "1/1"]
    as_json = json.loads(run("tenant", "list", "--json").stdout)
    assert {t["name"] for t in as_json} == {"acme", "beta", "gamma"}

    # When a second key is added and the first revoked
    added = run("tenant", "key", "add", "gamma")
    second = added.stdout.strip()
    assert second.startswith("csk_") and harness.deps.tenants.authenticate(second)
    revoked = run("tenant", "key", "revoke", "gamma", key.split("_")[1])
    assert revoked.exit_code == 0, revoked.output
    # Then the first is refused at once and the second still works
    assert harness.deps.tenants.authenticate(key) is None
    assert harness.deps.tenants.authenticate(second) is not None
    keys = run("tenant", "key", "list", "gamma").stdout
    assert key.split("_")[1] in keys and "-" in keys


def test_tenant_update_and_rotate_secret(served: Served) -> None:
    harness, _ = served
    updated = run("tenant", "update", "acme", "--max-active-jobs", "9", "--disable")
    assert updated.exit_code == 0, updated.output
    tenant = harness.deps.tenants.resolve("acme")
    assert tenant.max_active_jobs == 9 and tenant.disabled
    rotated = run("tenant", "rotate-secret", "acme")
    new_secret = rotated.stdout.split()[-1]
    assert harness.deps.tenants.resolve("acme").webhook_secrets[0] == new_secret
    assert run("tenant", "update", "acme").exit_code == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("tenant", "create", "acme"), "already exists"),
        (("tenant", "create", "Bad Name"), "tenant name"),
        (("tenant", "key", "add", "nobody"), "no tenant"),
        (("tenant", "key", "revoke", "acme", "zzzzzzzz"), "has no key"),
        (("tenant", "update", "nobody", "--rate-per-minute", "1"), "no tenant"),
    ],
)
def test_tenant_errors_are_one_line(served: Served, args: tuple[str, ...], fragment: str) -> None:
    assert_failed(run(*args), fragment)


# ---- jobs over HTTP --------------------------------------------------------------------------


def test_submit_status_jobs_cancel(served: Served, workflow_file: Path) -> None:
    harness, _ = served
    submitted = run("submit", str(workflow_file), "--user", "alice", "--json")
    assert submitted.exit_code == 0, submitted.output
    job_id = json.loads(submitted.stdout)["id"]
    assert harness.deps.jobs.get(job_id).user_id == "alice"

    status = run("status", job_id, "--user", "alice")
    assert status.exit_code == 0 and f"{job_id}  queued" in status.stdout
    listed = run("jobs", "--user", "alice")
    assert job_id in listed.stdout
    assert job_id not in run("jobs", "--user", "bob").stdout
    assert_failed(run("status", job_id, "--user", "bob"), "no such job", "404")

    cancelled = run("cancel", job_id, "--user", "alice")
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    assert_failed(run("cancel", job_id, "--user", "alice"), "already_terminal")
    assert job_id in run("jobs", "--user", "alice", "--status", "cancelled").stdout


def _play_pipeline(harness: Harness, done: threading.Event) -> None:
    """Stand in for the stage workers: run the first queued job (no inputs: on the render
    queue), report progress, finish."""
    # Note when a status read (the CLI's poll) finds the job running.
    seen_running = threading.Event()
    find = harness.deps.jobs.find

    def noting_find(job_id: str) -> Job | None:
        found = find(job_id)
        if found is not None and found.status is JobStatus.RUNNING:
            seen_running.set()
        return found

    harness.deps.jobs.find = noting_find  # type: ignore[method-assign]
    deadline = time.monotonic() + 20
    while not done.is_set() and time.monotonic() < deadline:
        raw = harness.deps.queue(Stage.RENDER).get(timeout_s=0.05)
        if raw is None:
            continue
        job = harness.deps.jobs.get(json.loads(raw)["job_id"])
        detail = {
            "node_id": "1",
            "node_type": "EmptyImage",
            "value": 3,
            "max": 6,
            "nodes_done": 0,
            "nodes_total": 2,
        }
        running = job.model_copy(
            update={
                "status": JobStatus.RUNNING,
                "stage": Stage.RENDER,
                "progress": 0.5,
                "progress_detail": detail,
            }
        )
        # As the render's heartbeat writes it: the record and its event log together.
        progress = {**detail, "fraction": 0.5}
        harness.deps.jobs.save(record_event(harness.deps, running, "progress", progress))
        seen_running.wait(10)  # the CLI has read the running job before it completes
        harness.complete(job.id, {"image.png": b"PNGDATA"})
        return


def test_submit_wait_shows_progress_and_downloads(
    served: Served, workflow_file: Path, tmp_path: Path
) -> None:
    harness, _ = served
    done = threading.Event()
    player = threading.Thread(target=_play_pipeline, args=(harness, done), daemon=True)
    player.start()
    out = tmp_path / "out"
    try:
        result = run(
            "submit",
            str(workflow_file),
            "--user",
            "alice",
            "--wait",
            "--out",
            str(out),
            "--poll",
            "0.1",
            "--timeout",
            "20",
        )
    finally:
        done.set()
        player.join(5)
    assert result.exit_code == 0, result.output
    assert "running  render  50%  node 1 (EmptyImage) 3/6 [0/2 nodes]" in result.stderr
    assert "completed" in result.stdout
    assert (out / "image.png").read_bytes() == b"PNGDATA"


def test_submit_refused_workflow_is_one_line(served: Served, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"class_type": "Nope", "inputs": {}}}))
    assert_failed(run("submit", str(bad)), "invalid_workflow", "Nope")
    bad.write_text("[1, 2]")
    assert_failed(run("submit", str(bad)), "JSON object")
    bad.write_text("{broken")
    assert_failed(run("submit", str(bad)))


def test_submit_with_inputs_and_webhook_reaches_the_url_policy(
    served: Served, workflow_file: Path
) -> None:
    assert_failed(
        run("submit", str(workflow_file), "--input", "a.png=http://127.0.0.1/a.png"), "url_refused"
    )
    assert_failed(run("submit", str(workflow_file), "--input", "no-equals-sign"), "NAME=URL")


def test_submit_uploads_a_local_file_input(served: Served, tmp_path: Path) -> None:
    import io

    from PIL import Image

    from app.store.uploads import UploadStore

    harness, _ = served
    photo = tmp_path / "photo.png"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG")
    photo.write_bytes(buffer.getvalue())
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "c"}},
    }
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(graph))

    result = run("submit", str(wf), "--input", f"photo.png={photo}", "--user", "alice", "--json")

    assert result.exit_code == 0, result.output
    job_id = json.loads(result.stdout)["id"]
    (spec,) = harness.deps.jobs.get(job_id).inputs
    assert spec.name == "photo.png" and spec.upload_id is not None
    record = UploadStore(harness.deps.backend).find(spec.upload_id)
    assert record is not None and record.user_id == "alice" and record.size == photo.stat().st_size
    assert_failed(
        run("submit", str(wf), "--input", f"photo.png={tmp_path / 'nope.png'}"),
        "neither a URL nor a readable file",
    )


def test_wait_timeout_fails_cleanly(served: Served, workflow_file: Path) -> None:
    assert_failed(
        run("submit", str(workflow_file), "--wait", "--timeout", "1", "--poll", "0.2"),
        "did not end",
    )


def test_without_key_or_server_the_cli_says_so(
    served: Served, workflow_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_failed(run("status", "job_x", "--api-key", "csk_wrong"), "unauthorized")
    closed = free_socket()
    port = closed.getsockname()[1]
    closed.close()
    assert_failed(run("jobs", "--api-url", f"http://127.0.0.1:{port}"), "cannot reach")
    monkeypatch.setenv("COMFYUI_SAAS_API_KEY", "")
    get_settings.cache_clear()
    assert_failed(run("submit", str(workflow_file)), "no API key")


def test_maintenance_commands_print_their_report(served: Served, workflow_file: Path) -> None:
    for command in ("fail-stale", "cleanup"):
        result = run(command)
        assert result.exit_code == 0, result.output
        assert isinstance(json.loads(result.stdout), dict)
