"""Run the double as its own process, as `dev --comfyui-cmd` runs a ComfyUI child.

    python -m tests.comfy_double --port 8199 --root /tmp/comfy [--node-delay ImageBlur=30]

It serves until SIGTERM or SIGINT (a managed ComfyUI is killed and started again by the
watchdog; `tests/integration/deploy/local/test_renderer_watchdog.py`).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tests.comfy_double.server import ComfyDouble


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--node-delay", action="append", default=[], metavar="CLASS=SECONDS")
    args = parser.parse_args()
    double = ComfyDouble(args.root)
    for item in args.node_delay:
        name, seconds = item.split("=", 1)
        double.node_delay_s[name] = float(seconds)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    double.start(args.port)
    try:
        stop.wait()
    finally:
        double.stop()


if __name__ == "__main__":
    main()
