"""Starting, checking and stopping ComfyUI as a child process (a stand-in `main.py`)."""

from __future__ import annotations

import json
import socket
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from app.core.errors import ComfyUnavailable
from app.deploy.modal import comfy_process as comfy_server
from app.deploy.modal.comfy_process import ComfyLaunch, ComfyProcess

CAPTURED_STATS = {"system": {"comfyui_version": "0.3.64"}, "devices": []}

FAKE_MAIN = textwrap.dedent(
    """
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    port = int(sys.argv[sys.argv.index("--port") + 1])
    with open("child_env.json", "w") as f:
        json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, f)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"system": {"comfyui_version": "0.3.64"}, "devices": []}).encode()
            self.send_response(200 if self.path == "/system_stats" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_command_listens_on_loopback_with_the_model_paths(tmp_path: Path) -> None:
    launch = ComfyLaunch(tmp_path, port=8188, extra_model_paths=tmp_path / "x.yaml", python="py")
    assert comfy_server.command(launch) == [
        "py",
        "main.py",
        "--listen",
        "127.0.0.1",
        "--port",
        "8188",
        "--disable-auto-launch",
        "--extra-model-paths-config",
        str(tmp_path / "x.yaml"),
    ]
    assert launch.url == "http://127.0.0.1:8188"


def test_child_env_drops_our_settings_and_credentials() -> None:
    parent = {
        "PATH": "/usr/bin",
        "COMFYUI_SAAS_S3_SECRET_ACCESS_KEY": "shh",
        "COMFYUI_SAAS_SIGNING_KEY": "sign",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "HF_TOKEN": "hf",
        "MODAL_TOKEN_SECRET": "m",
    }
    assert comfy_server.child_env(parent, "") == {"PATH": "/usr/bin"}
    assert comfy_server.child_env(parent, "cpu_until_restore") == {
        "PATH": "/usr/bin",
        "SNAPSHOT_HELPER_MODE": "cpu_until_restore",
    }


def test_process_starts_becomes_healthy_and_stops(tmp_path: Path) -> None:
    # Given: a ComfyUI folder whose main.py serves /system_stats
    (tmp_path / "main.py").write_text(FAKE_MAIN)
    port = _free_port()
    launch = ComfyLaunch(tmp_path, port=port, helper_mode="cpu_until_restore")
    process = ComfyProcess(launch)
    try:
        # When
        process.start({"PATH": "/usr/bin", "COMFYUI_SAAS_SIGNING_KEY": "sign"})
        process.wait_until_healthy(timeout_s=20)
        # Then
        assert process.alive()
        assert comfy_server.is_healthy(launch.url)
        seen = json.loads((tmp_path / "child_env.json").read_text())
        assert seen["argv"][:2] == ["--listen", "127.0.0.1"]
        assert "COMFYUI_SAAS_SIGNING_KEY" not in seen["env"]
        assert seen["env"]["SNAPSHOT_HELPER_MODE"] == "cpu_until_restore"
    finally:
        process.stop(grace_s=5)
    assert not process.alive()
    assert not comfy_server.is_healthy(launch.url, timeout_s=1)


def test_a_process_that_dies_fails_the_start_at_once(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import sys; sys.exit(3)\n")
    process = ComfyProcess(ComfyLaunch(tmp_path, port=_free_port(), python=sys.executable))
    process.start({"PATH": "/usr/bin"})
    with pytest.raises(ComfyUnavailable, match="exited"):
        process.wait_until_healthy(timeout_s=20)


def _client(handler: object) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_health_needs_a_system_block() -> None:
    good = _client(lambda r: httpx.Response(200, json=CAPTURED_STATS))
    wrong = _client(lambda r: httpx.Response(200, json={"status": "ok"}))
    down = _client(lambda r: httpx.Response(503))
    broken = _client(lambda r: httpx.Response(200, text="<html>"))
    assert comfy_server.is_healthy("http://c", client=good)
    assert not comfy_server.is_healthy("http://c", client=wrong)
    assert not comfy_server.is_healthy("http://c", client=down)
    assert not comfy_server.is_healthy("http://c", client=broken)


def test_wait_until_healthy_times_out() -> None:
    down = _client(lambda r: httpx.Response(503))
    with pytest.raises(ComfyUnavailable, match="not healthy"):
        comfy_server.wait_until_healthy("http://c", 0.3, interval_s=0.05, client=down)


def test_select_device() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/snapshot_helper/select_device":
            return httpx.Response(200, json={"switched": True, "device": "cuda:0"})
        return httpx.Response(404)

    client = _client(handler)
    assert comfy_server.select_device("http://c", client=client)["switched"] is True
    failing = _client(lambda r: httpx.Response(500, json={"error": "RuntimeError"}))
    with pytest.raises(ComfyUnavailable):
        comfy_server.select_device("http://c", client=failing)


def test_extra_model_paths_file_is_written(tmp_path: Path) -> None:
    path = comfy_server.write_extra_model_paths(tmp_path / "a" / "x.yaml", "k: v\n")
    assert path.read_text() == "k: v\n"
