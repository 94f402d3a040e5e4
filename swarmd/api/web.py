"""The read-only HTTP listener (`http_listen` in the daemon config): metrics, health and a status page.

Theory of operation
-------------------
* It serves four things and nothing else: `GET /metrics` (Prometheus's exposition, from the daemon's
  `Metrics`), `GET /healthz` (the event loop answers), the status page `GET /` (one self-contained HTML
  file, `status.html`, package data) and its JSON `GET /status.json` (`?logs=ID` adds that backend's last
  output lines). Every `/API/` path is refused (403) whatever the method, and any method but GET and HEAD
  (405), before anything else is looked at: there is no mutation over TCP, ever, and no code path from
  this app to the Fleet's mutations (it only reads `take_snapshot`'s copies and output rings).
* It has no notion of callers: TCP carries no peer credentials. Whoever reaches the port reads the fleet's
  statuses, GPU figures and the backends' last output lines, so it is off by default and, given as a port
  alone, binds loopback; bind it wider only where that is fine (a Prometheus on another host).
* It is a bare ASGI app (no framework: four read-only routes) served by hypercorn on a socket bound here
  before the daemon says READY, through `server.serve_socket`, the API's own serving loop.
* A request body is read and dropped (up to MAX_BODY; past that the connection is closed after the
  answer), so an answer sent before the body never leaves a keep-alive connection hanging.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio
from hypercorn.config import Config

import swarmd
from swarmd.config import format_listen
from swarmd.metrics import CONTENT_TYPE, Metrics, Snapshot

if TYPE_CHECKING:
    from swarmd.fleet import Fleet

log = logging.getLogger("swarmd.web")

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: The paths it serves (also the `path` label of swarmd_http_requests_total; anything else is "other").
PATHS = ("/", "/status.json", "/metrics", "/healthz")
ALLOWED_METHODS = ("GET", "HEAD")
#: A request body is read and dropped up to this size (a client that sent one gets its answer, not a reset
#: connection); past it the answer closes the connection.
MAX_BODY = 16 * 1024 * 1024
#: Lines of a backend's output `?logs=ID` gives by default, and at most.
LOG_LINES, MAX_LOG_LINES = 50, 1000
GRACEFUL_TIMEOUT = 1.0
#: The page is one file with inline style and script: nothing else may load, nothing may frame it.
_PAGE_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
     b"connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def status_page() -> bytes:
    """The status page (package data). Blocking (a file read): called once, in a worker thread."""
    return importlib.resources.files("swarmd.api").joinpath("status.html").read_bytes()


class WebApp:
    """The ASGI app of the listener. Owns nothing: reads the Fleet through `Metrics.snapshot` and the
    backends' output rings."""

    def __init__(self, fleet: Fleet, metrics: Metrics, page: bytes) -> None:
        self.fleet = fleet
        self.metrics = metrics
        self.page = page
        self.hostname = socket.gethostname()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        keep = await _drain(receive)
        status, headers, body = await self._answer(method, path, scope.get("query_string", b""))
        label = path if path in PATHS else ("/API/" if _is_api(path) else "other")
        self.metrics.http.count(label, str(status))
        headers = [(b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store"), *headers]
        if not keep:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _answer(self, method: str, path: str, query: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) for one request. The refusals come first, whatever the path."""
        if _is_api(path):
            return _text(403, "swarmd's API is served on its unix socket only (swarmctl, or ssh HOST "
                              "swarmctl ...); this HTTP listener is read-only\n")
        if method not in ALLOWED_METHODS:
            status, headers, body = _text(405, "read-only: GET or HEAD only\n")
            return status, [*headers, (b"allow", b"GET, HEAD")], body
        if path == "/metrics":
            return 200, [(b"content-type", CONTENT_TYPE.encode())], await self.metrics.render()
        if path == "/healthz":
            return _text(200, "ok\n")
        if path in ("/", "/index.html"):
            return 200, [(b"content-type", b"text/html; charset=utf-8"), *_PAGE_HEADERS], self.page
        if path == "/status.json":
            snap = await self.metrics.snapshot()
            answer = status_json(snap, self.hostname)
            logs = _log_request(query)
            if logs is not None:
                answer["logs"] = self._log_lines(*logs)
            data = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return 200, [(b"content-type", b"application/json")], data.encode("utf-8", "backslashreplace")
        return _text(404, f"not found: this listener serves {', '.join(PATHS)}\n")

    def _log_lines(self, backend_id: int, count: int) -> dict[str, Any]:
        backend = self.fleet.get(backend_id)
        if backend is None:
            return {"id": backend_id, "lines": None}
        return {"id": backend_id, "lines": [{"time": line.time, "stream": line.stream, "text": line.text}
                                            for line in backend.ring.tail(count)]}


def status_json(snap: Snapshot, hostname: str) -> dict[str, Any]:
    """The status page's data: the host, its GPUs (with the backends on each) and one entry per backend."""
    totals = {device.uuid: device.memory_total for device in snap.gpus}
    on_gpu: dict[str, list[int]] = {}
    backends = []
    for view in snap.backends:
        gpus = []
        for use in view.gpus:
            if use.uuid is not None:
                on_gpu.setdefault(use.uuid, []).append(view.id)
            gpus.append({"index": use.index, "uuid": use.uuid, "name": use.name, "memory_used": use.memory_used,
                         "memory_total": totals.get(use.uuid or "")})
        running = view.status == "running" and view.ready_since is not None
        backends.append({
            "id": view.id, "title": view.title, "type": view.type, "enabled": view.enabled,
            "status": view.status, "message": view.status_message, "pid": view.pid, "port": view.port,
            "starts": view.starts, "restarts": view.restarts,
            "uptime": max(0.0, snap.taken - view.ready_since) if running and view.ready_since else None,
            "last_exit": None if view.exit_text is None else {
                "text": view.exit_text, "code": view.exit_code, "signal": view.exit_signal,
                "ago": None if view.exit_time is None else max(0.0, snap.taken - view.exit_time),
                "cause": view.exit_cause},
            "gpus": gpus, "gpu_memory": view.gpu_memory,
        })
    return {
        "host": hostname, "version": swarmd.__version__, "time": snap.taken,
        "file_problem": snap.file_problem, "counts": snap.counts, "gpu_available": snap.gpu_available,
        "gpus": [{"index": d.index, "uuid": d.uuid, "name": d.name, "memory_used": d.memory_used,
                  "memory_total": d.memory_total, "utilization": d.utilization_gpu,
                  "temperature": d.temperature, "backends": on_gpu.get(d.uuid, [])} for d in snap.gpus],
        "backends": backends,
    }


def _is_api(path: str) -> bool:
    # Case-insensitive, as the API matches route names: /api/ListBackends is refused just the same.
    return path.lower().startswith("/api/") or path.lower() == "/api"


def _text(status: int, text: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, [(b"content-type", b"text/plain; charset=utf-8")], text.encode()


def _log_request(query: bytes) -> tuple[int, int] | None:
    """`?logs=ID[&lines=N]` -> (id, lines); None when not asked (or not a number)."""
    fields = parse_qs(query.decode("latin-1"))
    raw = fields.get("logs", [""])[0]
    if not raw.lstrip("-").isdigit() or len(raw) > 12:
        return None
    lines_raw = fields.get("lines", [""])[0]
    lines = int(lines_raw) if lines_raw.isdigit() and len(lines_raw) < 6 else LOG_LINES
    return int(raw), max(1, min(lines, MAX_LOG_LINES))


async def _drain(receive: Receive) -> bool:
    """Read the request body and drop it. False when it was larger than MAX_BODY (close the connection)."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return False  # the client went away
        size += len(message.get("body", b""))
        if size > MAX_BODY:
            return False
        if not message.get("more_body", False):
            return True


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def bind_tcp(address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket on (host, port). Raises OSError naming the address when it cannot."""
    from swarmd.api.server import LISTEN_BACKLOG

    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen on http_listen {format_listen(address)}: "
                                 f"{err.strerror or err}") from None
    sock.setblocking(False)
    return sock


async def serve_web(fleet: Fleet, metrics: Metrics, address: tuple[str, int], *,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the read-only listener on `address` until cancelled. Calls `task_status.started((host,
    port))` with the address bound (port 0 becomes the port the kernel chose) once it listens. Raises
    OSError before `started` when it cannot bind."""
    from swarmd.api.server import serve_socket

    page = await trio.to_thread.run_sync(status_page)
    sock = bind_tcp(address)
    bound = sock.getsockname()[:2]
    try:
        config = Config()
        config.graceful_timeout = GRACEFUL_TIMEOUT
        config.accesslog = None
        config.errorlog = logging.getLogger("swarmd.web.http")
        started = (bound[0], bound[1])
        if address[0] not in ("127.0.0.1", "::1") and not address[0].startswith("127."):
            log.warning("http_listen %s is not loopback: whoever reaches it can read the backends' statuses, "
                        "GPU figures and last output lines (read-only)", format_listen(started))
        await serve_socket(WebApp(fleet, metrics, page), config, sock, task_status=task_status,
                           started_value=started)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
