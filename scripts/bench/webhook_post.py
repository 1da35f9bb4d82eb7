"""CPU and wall time of one webhook POST through the SSRF-safe client.

    python scripts/bench/webhook_post.py [--posts 300] [--json]

Posts `--posts` small JSON bodies, one after another, to a keep-alive HTTP/1.1 receiver on
127.0.0.1 (in this process, on its own thread) and reports the posting thread's CPU per
post (`time.thread_time`, so the receiver's work is not counted), wall time per post and
how many TCP connections the receiver saw (1 when the connection is reused).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.adapters.net.policy import UrlPolicy, parse_cidrs
from app.adapters.net.safe_client import SafeHttpClient


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: ClassVar[set[int]] = set()  # client ports seen (one per connection)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Receiver.peers.add(self.client_address[1])
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = int(server.server_address[1])
    try:
        policy = UrlPolicy(
            allow_http=True,
            allowed_ports=frozenset({port}),
            allow_cidrs=parse_cidrs(["127.0.0.1/32"]),
        )
        client = SafeHttpClient(policy)
        url = f"http://127.0.0.1:{port}/hook"
        body = json.dumps({"type": "job.completed", "data": {"id": "job_x"}}).encode()
        cpu_ms: list[float] = []
        wall_ms: list[float] = []
        for _ in range(args.posts):
            cpu, wall = time.thread_time(), time.perf_counter()
            client.post(url, body, {"content-type": "application/json"}, timeout_s=5)
            cpu_ms.append((time.thread_time() - cpu) * 1000)
            wall_ms.append((time.perf_counter() - wall) * 1000)
    finally:
        server.shutdown()
        server.server_close()
    result = {
        "bench": "webhook_post",
        "posts": args.posts,
        "cpu_ms_p50": round(statistics.median(cpu_ms), 3),
        "cpu_ms_mean": round(statistics.fmean(cpu_ms), 3),
        "wall_ms_p50": round(statistics.median(wall_ms), 3),
        "connections": len(_Receiver.peers),
    }
    print("| posts | CPU per post p50 / mean | wall per post p50 | connections |")
    print("|---|---|---|---|")
    print(
        f"| {args.posts} | {result['cpu_ms_p50']} / {result['cpu_ms_mean']} ms "
        f"| {result['wall_ms_p50']} ms | {result['connections']} |"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
