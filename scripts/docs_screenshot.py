"""Check that `/docs` renders with no network: headless Chromium against a local ingress.

Starts the ingress on 127.0.0.1 (local backend, a throwaway data folder) in a child
process, opens `/docs` in headless Chromium with every background fetch turned off, and
saves the screenshot (`docs.png`) and the rendered DOM (`docs.html`) under `--out`. The
page counts as rendered when the DOM holds Swagger UI's operation blocks for our routes
and the screenshot is not blank. Whatever it started is stopped on the way out, failure
or not. Exit status 0 when the page rendered; prints one JSON line with what it saw.

    python3 scripts/docs_screenshot.py --out /tmp/docs-check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
#: Routes whose operation blocks must be on the rendered page.
EXPECTED_PATHS = ("/v1/jobs", "/v1/jobs/{job_id}", "/health")
#: Chromium's flags: no sandbox (root in a container), nothing fetched behind our back.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # No host but ours resolves: the page must render from what the app serves.
    f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {HOST}",
    "--hide-scrollbars",
    "--window-size=1280,1600",
    # Lets the page's scripts fetch /openapi.json and draw before the capture.
    "--virtual-time-budget=15000",
)
#: A screenshot with fewer distinct colours than this is blank (Swagger UI draws coloured
#: method badges, text and borders; a blank page is one or two colours).
MIN_COLOURS = 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def serve(port: int, data_dir: Path) -> None:
    """The child: the ingress over a local backend rooted in `data_dir`."""
    import uvicorn

    from app.api.ingress import create_app
    from app.core.config import Settings
    from app.engine.deps import build_deps

    settings = Settings(backend="local", data_dir=data_dir, public_url=f"http://{HOST}:{port}")
    uvicorn.run(create_app(build_deps(settings)), host=HOST, port=port, log_level="warning")


def wait_healthy(url: str, child: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the ingress exited with {child.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the ingress did not answer within {timeout_s:.0f} s")


def chromium(binary: str, profile: Path, *args: str, timeout_s: float) -> str:
    """Run headless Chromium once with a fresh profile; its stdout.

    In its own process group, so its helper processes go with it if it hangs.
    """
    browser = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = browser.communicate(timeout=timeout_s)
    finally:
        stop_group(browser)
    if browser.returncode != 0:
        raise RuntimeError(f"chromium exited with {browser.returncode}: {err[-2000:]}")
    return out


def stop_group(process: subprocess.Popen[str]) -> None:
    """Kill what is left of the process's group (helpers that outlived it included)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process.poll() is None:
        process.wait()


def distinct_colours(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    return (1 << 16) if colours is None else len(colours)


def check(dom: str, png: Path) -> dict[str, object]:
    """What the capture shows: operation blocks per expected route, colours, problems."""
    paths = re.findall(r'class="opblock-summary-path"[^>]*data-path="([^"]+)"', dom)
    if not paths:  # older Swagger UI: the path is the element's text
        paths = re.findall(r'opblock-summary-path"[^>]*>\s*<a[^>]*><span>([^<]+)<', dom)
    blocks = len(re.findall(r'class="opblock opblock-', dom))
    colours = distinct_colours(png) if png.exists() else 0
    problems = [f"no operation block for {p}" for p in EXPECTED_PATHS if p not in paths]
    if blocks == 0:
        problems.append("no Swagger UI operation blocks in the DOM")
    if colours < MIN_COLOURS:
        problems.append(f"the screenshot is blank ({colours} colours)")
    return {
        "operation_blocks": blocks,
        "paths": sorted(set(paths)),
        "colours": colours,
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs-screenshot"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return 0
    if not Path(args.chromium).exists():
        print(f"chromium not found at {args.chromium}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    png, html = args.out / "docs.png", args.out / "docs.html"
    port = free_port()
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="docs-shot-") as tmp:
        work = Path(tmp)
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), str(work / "data")],
            env={**os.environ, "COMFYUI_SAAS_LOG_LEVEL": "WARNING"},
        )
        try:
            wait_healthy(url, child, args.timeout)
            chromium(
                args.chromium,
                work / "profile-shot",
                f"--screenshot={png}",
                url + "/docs",
                timeout_s=args.timeout,
            )
            dom = chromium(
                args.chromium,
                work / "profile-dom",
                "--dump-dom",
                url + "/docs",
                timeout_s=args.timeout,
            )
            html.write_text(dom)
        finally:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    seen = check(dom, png)
    print(json.dumps({"docs_screenshot": str(png), **seen}))
    return 0 if not seen["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
