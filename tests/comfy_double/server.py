"""A protocol-faithful ComfyUI double: a real aiohttp HTTP + websocket server (tests only).

It speaks upstream ComfyUI's API as captured from v0.3.64 (routes, JSON shapes, status
codes, the websocket message sequence, cooperative interrupts, caching) and really runs
the model-free nodes in `nodes.py` with Pillow. Upstream is aiohttp too, so the wire
behaviour (frames, closes, multipart) is the same library's.

Scenario knobs, set as attributes or with `POST /_double/control`:
- `node_delay_s = {"ImageBlur": 1.0}`: a node class takes that long (interruptible only
  at node boundaries, as upstream);
- `drop_ws_at_node = "2"`: every websocket is closed when node 2 starts;
  `refuse_ws = True` then refuses new websocket connections (503);
- `crash_at_node = "2"`: the server stops listening and drops every connection when
  node 2 starts, like a killed process;
- `cache = False`: like `--cache-none`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from tests.comfy_double.execution import Crashed, Execution
from tests.comfy_double.nodes import NodeResult
from tests.comfy_double.validation import validate_prompt

FIXTURES = Path(__file__).parent.parent / "fixtures" / "comfyui"


@dataclass
class QueueItem:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class ComfyDouble:
    """Start with `start()`, stop with `stop()`; `url` is its base URL."""

    def __init__(self, root: Path) -> None:
        self.input_dir = root / "input"
        self.output_dir = root / "output"
        self.temp_dir = root / "temp"
        for folder in (self.input_dir, self.output_dir, self.temp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.object_info: dict[str, Any] = json.loads((FIXTURES / "object_info.json").read_text())
        self.system_stats = json.loads((FIXTURES / "system_stats.json").read_text())
        # Report this double's own folders, as a real ComfyUI started with them would.
        self.system_stats["system"]["argv"] = ["main.py", "--cpu", "--base-directory", str(root)]
        self.root = root
        self.history: dict[str, dict[str, Any]] = {}
        self.pending: list[QueueItem] = []
        self.running: QueueItem | None = None
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.received: list[dict[str, Any]] = []  # every POST /prompt body, for assertions
        self.node_delay_s: dict[str, float] = {}
        #: A slow ComfyUI (many custom nodes): GET /object_info answers after this long.
        self.object_info_delay_s = 0.0
        #: GET /object_info requests being answered right now.
        self.object_info_in_flight = 0
        self.drop_ws_at_node: str | None = None
        self.refuse_ws = False
        self.crash_at_node: str | None = None
        self.cache = True
        self._cache: dict[str, NodeResult] = {}
        self._interrupt = False
        self._number = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._wake: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- lifecycle ------------------------------------------------------------------

    def start(self, port: int = 0) -> str:
        self._thread.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._call(self._start(sock), timeout_s=10)
        return self.url

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self._call(self._shutdown(), timeout_s=10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _start(self, sock: socket.socket) -> None:
        self._wake = asyncio.Event()
        app = web.Application(client_max_size=100 * 1024 * 1024)
        routes = [
            web.get("/system_stats", self._system_stats),
            web.get("/internal/folder_paths", self._folder_paths),
            web.get("/object_info", self._object_info),
            web.get("/object_info/{cls}", self._object_info_one),
            web.get("/prompt", self._get_prompt),
            web.post("/prompt", self._post_prompt),
            web.get("/queue", self._get_queue),
            web.post("/queue", self._post_queue),
            web.post("/interrupt", self._post_interrupt),
            web.get("/history", self._get_history),
            web.get("/history/{prompt_id}", self._get_history_one),
            web.post("/history", self._post_history),
            web.get("/view", self._view),
            web.post("/upload/image", self._upload),
            web.get("/ws", self._ws),
        ]
        for route in routes:
            app.router.add_route(route.method, route.path, route.handler)
            app.router.add_route(route.method, "/api" + route.path, route.handler)
        app.router.add_post("/_double/control", self._control)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._worker = asyncio.ensure_future(self._work())

    async def _shutdown(self) -> None:
        self._worker.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _crash(self) -> None:
        """Stop answering at once: sockets and kept-alive connections dropped, port closed."""
        for ws in list(self.sockets.values()):
            transport = ws._writer.transport if ws._writer else None
            if transport is not None:
                transport.abort()
        self.sockets.clear()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        raise Crashed

    # --- messages -------------------------------------------------------------------

    async def send(self, kind: str, data: dict[str, Any] | bytes, sid: str | None) -> None:
        targets = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
        for ws in targets:
            if ws is None or ws.closed:
                continue
            try:
                if isinstance(data, bytes):
                    await ws.send_bytes(data)
                else:
                    await ws.send_json({"type": kind, "data": data})
            except (ConnectionError, RuntimeError):
                pass  # upstream logs and carries on

    def _queue_info(self) -> dict[str, Any]:
        remaining = len(self.pending) + (1 if self.running else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    async def _status(self) -> None:
        await self.send("status", {"status": self._queue_info()}, None)

    # --- HTTP routes ------------------------------------------------------------------

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.system_stats)

    async def _folder_paths(self, request: web.Request) -> web.Response:
        return web.json_response({"custom_nodes": [str(self.root / "custom_nodes")]})

    async def _object_info(self, request: web.Request) -> web.Response:
        self.object_info_in_flight += 1
        try:
            await asyncio.sleep(self.object_info_delay_s)
        finally:
            self.object_info_in_flight -= 1
        info = json.loads(json.dumps(self.object_info))
        files = sorted(str(p.relative_to(self.input_dir)) for p in self.input_dir.rglob("*.png"))
        info["LoadImage"]["input"]["required"]["image"][0] = files
        return web.json_response(info)

    async def _object_info_one(self, request: web.Request) -> web.Response:
        cls = request.match_info["cls"]
        return web.json_response({cls: self.object_info[cls]} if cls in self.object_info else {})

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            text = "500 Internal Server Error\n\nServer got itself in trouble"
            return web.Response(status=500, text=text)
        self.received.append(body)
        number = float(body["number"]) if "number" in body else self._number
        self._number += 1
        if "prompt" not in body:
            error: dict[str, Any] | None = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        valid, error, outputs, node_errors = validate_prompt(
            prompt, self.object_info, self.input_dir
        )
        if not valid:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        self.pending.append(QueueItem(number, prompt_id, prompt, extra, outputs))
        self.pending.sort(key=lambda item: item.number)
        await self._status()
        assert self._wake is not None
        self._wake.set()
        answer = {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}
        return web.json_response(answer)

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self.running.as_list()] if self.running else []
        pending = [item.as_list() for item in self.pending]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.pending.clear()
        for prompt_id in body.get("delete", []):
            self.pending = [item for item in self.pending if item.prompt_id != prompt_id]
        await self._status()
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not prompt_id or (self.running and self.running.prompt_id == prompt_id):
            self._interrupt = True
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.Response:
        items = list(self.history.items())
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]) :]
        return web.json_response(dict(items))

    async def _get_history_one(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete", []):
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    def _folder(self, kind: str) -> Path | None:
        return {"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir}.get(kind)

    async def _view(self, request: web.Request) -> web.StreamResponse:
        filename = request.query.get("filename", "")
        subfolder = request.query.get("subfolder", "")
        folder = self._folder(request.query.get("type", "output"))
        if folder is None or not filename:
            return web.Response(status=400)
        if filename.startswith("/") or ".." in filename or ".." in Path(subfolder).parts:
            return web.Response(status=400)
        path = folder / subfolder / filename
        if not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path, headers={"Content-Disposition": f'filename="{filename}"'})

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if not isinstance(image, web.FileField):
            return web.Response(status=400)
        kind = str(form.get("type") or "input")
        subfolder = str(form.get("subfolder") or "")
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        folder = self._folder(kind)
        if folder is None or ".." in Path(subfolder).parts or subfolder.startswith("/"):
            return web.Response(status=400)
        target = folder / subfolder
        target.mkdir(parents=True, exist_ok=True)
        data = image.file.read()
        name = Path(image.filename or "").name
        if not name:
            return web.Response(status=400)
        path = target / name
        stem, suffix, n = path.stem, path.suffix, 1
        while not overwrite and path.exists() and path.read_bytes() != data:
            path = target / f"{stem} ({n}){suffix}"
            n += 1
        path.write_bytes(data)
        return web.json_response({"name": path.name, "subfolder": subfolder, "type": kind})

    async def _control(self, request: web.Request) -> web.Response:
        body = await request.json()
        for key in ("node_delay_s", "drop_ws_at_node", "refuse_ws", "crash_at_node", "cache"):
            if key in body:
                setattr(self, key, body[key])
        return web.json_response({"ok": True})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self.refuse_ws:
            return web.Response(status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        await self.send("status", {"status": self._queue_info(), "sid": sid}, sid)
        first = True
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = {"supports_preview_metadata": True, "max_upload_size": 104857600}
                    await self.send("feature_flags", flags, sid)
                first = False
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]
        return ws

    # --- execution ------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                item = self.pending.pop(0)
                self.running = item
                await self._status()
                self._interrupt = False  # upstream resets the flag as each prompt starts
                try:
                    await Execution(self, item).run()
                except Crashed:
                    return
                self.running = None
                await self._status()
                client_id = item.extra_data.get("client_id")
                if client_id is not None:
                    done = {"node": None, "prompt_id": item.prompt_id}
                    await self.send("executing", done, client_id)
