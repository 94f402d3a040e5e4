"""The API routes: SwarmUI's eight backend routes, its session/log/resource routes, and swarmd's status.

Each route is a `Route`: a name, the permission flag it needs, its declared parameters (coerced by
`params.coerce_params` before the handler runs) and an async handler returning the answer object. Handlers
raise `ApiError` for SwarmUI's handler errors; the Fleet's `FleetError` is turned into the same answer by
the app. Mutations go through the Fleet, which writes the backends file before it returns, so an answer
that acknowledges a change is only sent once the change is on disk.

Route names are matched case-insensitively (`ROUTES` is keyed by the lowercased name).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

import swarmd
from swarmd import gpu, logs
from swarmd.api import access
from swarmd.api.params import ApiError, Param, invalid
from swarmd.api.resources import CpuSampler, cpu_cores, read_meminfo
from swarmd.api.shape import backend_json_pieces, backend_object
from swarmd.settings import api_text, parse_decimal
from swarmd.supervise import output

if TYPE_CHECKING:
    from swarmd.fleet import Fleet


class Encoded:
    """A route's answer already encoded as a JSON object: its text, in pieces (ListBackends builds it from
    each backend's cached parts). Joined once, by the response: at 1000 backends the answer is ~0.9 MB,
    and every copy of it on the way (concatenations, a str subclass, str()) took that much more memory
    for a moment -- memory the allocator then kept."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    @property
    def text(self) -> str:
        return "".join(self.pieces)

#: An async callable giving the GPU section of GetServerResourceInfo ({"0": {...}, ...}) or None when
#: there is no GPU information; the GPU module provides it (see create_app's `gpu_info`).
GpuInfoHook = Callable[[], Awaitable[Mapping[str, Any] | None]]
#: A callable giving extra fields for GetDaemonStatus (later issues: reload state, uptime, ...).
DaemonStatusHook = Callable[[], Mapping[str, Any]]

#: The longest a ListRecentLogMessages long poll (`wait_seconds`, a swarmd extension) may wait.
MAX_LOG_WAIT = 30.0
#: A backend log's identifier is LOG_PREFIX + its id, as SwarmUI's.
LOG_PREFIX = "backend-"
_LONG_RE = re.compile(r"^\s*[+-]?[0-9]+\s*$")
#: A backend log's colour (SwarmUI's default), and its name: `<prefix>-<id>` with the prefix of its type --
#: SwarmUI's `ComfyUI` for a self-started ComfyUI; a type not listed here uses its type id.
_LOG_COLORS = {"backend": "#707070"}
_LOG_NAME_PREFIXES = {"comfyui_selfstart": "ComfyUI", "comfyui_api": "ComfyUI-API", "process": "Process"}


@dataclass
class ApiContext:
    """What the routes share for the life of the app: the Fleet and a few daemon-wide facts."""

    fleet: Fleet
    server_id: str = field(default_factory=lambda: secrets.token_hex(16))
    daemon_status: DaemonStatusHook | None = None
    gpu_info: GpuInfoHook | None = None
    cpu: CpuSampler = field(default_factory=CpuSampler)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the peer credentials (None when unreadable) and the role they map to."""

    peer: access.PeerCred | None
    role: str | None


Handler = Callable[..., Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Route:
    name: str
    handler: Handler
    params: tuple[Param, ...] = ()
    flag: str | None = None


ROUTES: dict[str, Route] = {}


def route(name: str, *params: Param, flag: str | None) -> Callable[[Handler], Handler]:
    """Register a handler `async (ctx, caller, body, **params) -> dict` under `name`."""

    def register(handler: Handler) -> Handler:
        ROUTES[name.lower()] = Route(name, handler, tuple(params), flag)
        return handler

    return register


# -- the backend routes (BackendAPI.md) --------------------------------------------------------------


@route("ListBackendTypes", flag="view_backends_list")
async def list_backend_types(ctx: ApiContext, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    return {"list": [backend_type.to_api() for backend_type in ctx.fleet.types.values()]}


@route(
    "ListBackends",
    Param("nonreal", "Boolean", False),
    Param("full_data", "Boolean", False),
    flag="view_backends_list",
)
async def list_backends(
    ctx: ApiContext, caller: Caller, body: Mapping[str, Any], *, nonreal: bool, full_data: bool
) -> Encoded:
    # Ascending id; negative ids would be SwarmUI's "nonreal" backends (swarmd has none today).
    # Built from each backend's cached JSON: the web UI polls this with every backend in it.
    # Secrets (env values, credentials in text settings) stay with admins: others get the masked view.
    if full_data:
        await gpu.refresh()  # GPU memory per backend: NVML in a thread, at most every half second
    masked = caller.role not in access.ADMINS
    pieces = ["{"]
    for backend in ctx.fleet.backends():
        if nonreal or backend.id >= 0:
            # The cached static part is referenced, not copied into a string per backend.
            pieces += ('"', str(backend.id), '":', *backend_json_pieces(backend, full_data=full_data,
                                                                         masked=masked), ",")
    if len(pieces) > 1:
        pieces[-1] = "}"  # in place of the last comma
    else:
        pieces.append("}")
    return Encoded(pieces)


@route(
    "AddNewBackend",
    Param("type_id", "String"),
    # swarmd extensions, so `swarmctl add` is one atomic change: SwarmUI clients never send them.
    Param("title", "String", None),
    Param("settings", "JObject", None),
    flag="add_remove_backends",
)
async def add_new_backend(
    ctx: ApiContext, caller: Caller, body: Mapping[str, Any], *, type_id: str, title: str | None,
    settings: dict[str, Any] | None,
) -> dict[str, Any]:
    backend = await ctx.fleet.add(type_id, title=title, settings=settings)
    return backend_object(backend, masked=caller.role not in access.ADMINS)


@route(
    "EditBackend",
    Param("backend_id", "Int32"),
    Param("title", "String"),
    Param("new_id", "Int32", -1),
    flag="edit_backends",
)
async def edit_backend(
    ctx: ApiContext, caller: Caller, body: Mapping[str, Any], *, backend_id: int, title: str, new_id: int
) -> dict[str, Any]:
    # SwarmUI's web UI sends the settings as `settings`; BackendAPI.md calls the object `raw_inp`. The first
    # of the two that is present decides, and it must be an object.
    settings: Any = None
    for key in ("settings", "raw_inp"):
        if key in body:
            settings = body[key]
            break
    if not isinstance(settings, Mapping):
        raise ApiError("Missing settings.")
    if new_id == backend_id:
        new_id = -1
    # A value sent back masked (as ListBackends showed it) keeps what is stored: the Fleet resolves it.
    backend = await ctx.fleet.edit(backend_id, title=title, settings=dict(settings), new_id=new_id)
    return backend_object(backend, masked=caller.role not in access.ADMINS)


@route("DeleteBackend", Param("backend_id", "Int32"), flag="add_remove_backends")
async def delete_backend(ctx: ApiContext, caller: Caller, body: Mapping[str, Any], *, backend_id: int) -> dict[str, Any]:
    deleted = await ctx.fleet.delete(backend_id)
    return {"result": "Deleted." if deleted else "Already didn't exist."}


@route("ToggleBackend", Param("backend_id", "Int32"), Param("enabled", "Boolean"), flag="toggle_backends")
async def toggle_backend(
    ctx: ApiContext, caller: Caller, body: Mapping[str, Any], *, backend_id: int, enabled: bool
) -> dict[str, Any]:
    changed = await ctx.fleet.toggle(backend_id, enabled)
    return {"result": "Success." if changed else "No change."}


@route(
    "RestartBackends",
    Param("backend", "String", "all"),
    # swarmd's extension: also restart a loading or waiting backend (SwarmUI restarts running or errored
    # ones only); the answer then says which were restarted and from what status.
    Param("force", "Boolean", False),
    flag="restart_backends",
)
async def restart_backends(ctx: ApiContext, caller: Caller, body: Mapping[str, Any], *, backend: str,
                           force: bool) -> dict[str, Any]:
    before = {b.id: b.status for b in ctx.fleet.backends()}
    restarted = await ctx.fleet.restart(backend, force=force)
    answer: dict[str, Any] = {"result": "Success.", "count": len(restarted)}
    if force:
        answer["restarted"] = [{"id": b.id, "was": before.get(b.id)} for b in restarted]
    return answer


@route(
    "FreeBackendMemory",
    Param("system_ram", "Boolean", False),
    Param("backend", "String", "all"),
    flag="control_mem_clean",
)
async def free_backend_memory(
    ctx: ApiContext, caller: Caller, body: Mapping[str, Any], *, system_ram: bool, backend: str
) -> dict[str, Any]:
    result, count = await ctx.fleet.free_memory(backend, system_ram=system_ram)
    return {"result": bool(result), "count": count}


# -- session, logs, resources ------------------------------------------------------------------------


@route("GetNewSession", flag=None)
async def get_new_session(ctx: ApiContext, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    # Identity comes from the socket, not from sessions: the id is accepted back but never checked.
    return {
        "session_id": secrets.token_hex(20).upper(),
        "user_id": await access.user_label(caller.peer.uid) if caller.peer else "unknown",
        "output_append_user": False,
        "version": swarmd.__version__,
        "server_id": ctx.server_id,
        "permissions": access.permissions(caller.role),
    }


@route("ListLogTypes", flag="view_logs")
async def list_log_types(ctx: ApiContext, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    """SwarmUI's answer: every log -- the daemon's six level logs, then one per backend in id order."""
    return {"types_available": _types_available(_all_logs(ctx.fleet))}


#: About the most bytes of messages one ListRecentLogMessages answer holds (each line's text plus
#: `output.LINE_OVERHEAD`).
LOG_ANSWER_BYTES = 4 * 1024 * 1024


@route(
    "ListRecentLogMessages",
    Param("types", "JArray"),
    flag="view_logs",
)
async def list_recent_log_messages(
    ctx: ApiContext, caller: Caller, body: Mapping[str, Any], *, types: list[Any]
) -> dict[str, Any]:
    """{"types": ["Info", "ComfyUI-0"], "last_sequence_ids": {"Info": 12}, "wait_seconds": 10}

    -> {"types_available": [...], "last_sequence_id": N,
        "data": {"Info": [{sequence_id, time, message, stream}], "ComfyUI-0": [...]}}

    As SwarmUI's: `types` names logs; `data` holds, per known requested log, its messages after the mark
    `last_sequence_ids[name]` (none: from the start), oldest first; sequence ids come from one counter
    shared by every log and `last_sequence_id` is its value. swarmd's additions: `last_sequence_ids` may be
    left out (every log from the start; SwarmUI answers an internal error); a backend log may also be
    named by its identifier (`backend-3`), answered under that key; a mark above the counter comes from an
    earlier daemon and means from the start; each message says its `stream` (stdout, stderr or swarmd);
    `wait_seconds` (at most 30) holds the answer until a requested log has a new message, for followers;
    one answer holds at most about `LOG_ANSWER_BYTES` of messages (the oldest first, at least one per log
    while the bound lasts): a reader that passes the last `sequence_id` it got of each log as its mark
    gets the rest on its next call.
    """
    wanted = [api_text(item) for item in types]
    given = _last_sequence_ids(body)
    wait = _wait_seconds(body)
    found = _log_backends(_all_logs(ctx.fleet), wanted)
    rings = {key: log[3] for key, log in found.items()}
    newest = output.last_sequence_id()
    after: dict[str, int] = {}
    for key, (name, _color, identifier, _ring) in found.items():
        mark = next((given[k] for k in (key, name, identifier) if k in given), -1)
        after[key] = -1 if mark > newest else mark
    if wait > 0 and rings and not any(ring.last_seq > after[key] for key, ring in rings.items()):
        await _wait_for_any(rings, after, wait)
    with output.consistent():  # a copy of each log, and the counter that covers them all
        last = output.last_sequence_id()
        lines: dict[str, list[output.LogLine]] = {}
        budget = LOG_ANSWER_BYTES  # one answer is bounded: a reader continues from the marks it got
        for key, ring in rings.items():
            lines[key] = ring.since(after[key], budget=budget) if budget > 0 else []
            budget -= sum(len(line.text) + output.LINE_OVERHEAD for line in lines[key])
    data = {
        key: [{"sequence_id": line.seq, "time": _timestamp(line.time), "message": line.text,
               "stream": line.stream} for line in found_lines]
        for key, found_lines in lines.items()
    }
    return {"types_available": _types_available(_all_logs(ctx.fleet)), "last_sequence_id": last, "data": data}


@route("GetServerResourceInfo", flag="read_server_info_panels")
async def get_server_resource_info(ctx: ApiContext, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    """cpu.usage is the busy share of all cores, 0.0 to 1.0; memory figures are bytes; "gpus" comes from
    the `gpu_info` hook and is left out when it gives nothing (as SwarmUI does without NVIDIA)."""
    answer: dict[str, Any] = {
        "cpu": {"usage": await ctx.cpu.usage(), "cores": cpu_cores()},
        "system_ram": read_meminfo() or {"total": 0, "used": 0, "free": 0},
    }
    if ctx.gpu_info is not None:
        gpus = await ctx.gpu_info()
        if gpus:  # SwarmUI leaves "gpus" out when there are none
            answer["gpus"] = dict(gpus)
    return answer


@route("GetDaemonStatus", flag="view_backends_list")
async def get_daemon_status(ctx: ApiContext, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
    """swarmd's own route: the backends file, whether it is currently valid, and backends per status."""
    fleet = ctx.fleet
    answer: dict[str, Any] = {
        "version": swarmd.__version__,
        "backends_file": fleet.path,
        "file_problem": fleet.file_problem or None,
        "counts": dict(fleet.status_counts()),
    }
    if ctx.daemon_status is not None:
        answer.update(ctx.daemon_status())
    return answer


# -- helpers ---------------------------------------------------------------------------------------------


def _last_sequence_ids(body: Mapping[str, Any]) -> dict[str, int]:
    raw = body.get("last_sequence_ids")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise invalid(api_text(raw), "last_sequence_ids", "JObject")
    result: dict[str, int] = {}
    for key, value in raw.items():
        text = api_text(value)
        number = _parse_long(text)
        if number is None:
            raise invalid(text, f"last_sequence_ids.{key}", "Int64")
        result[str(key)] = number
    return result


def _parse_long(text: str) -> int | None:
    """C#'s long.TryParse: like parse_int, for Int64."""
    if not _LONG_RE.match(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _wait_seconds(body: Mapping[str, Any]) -> float:
    if "wait_seconds" not in body:
        return 0.0
    text = api_text(body["wait_seconds"])
    value = parse_decimal(text)
    if value is None or value < 0:
        raise invalid(text, "wait_seconds", "Double")
    return min(value, MAX_LOG_WAIT)


#: One log: (name, colour, identifier, ring).
_Log = tuple[str, str, str, output.OutputRing]


def _all_logs(fleet: Fleet) -> list[_Log]:
    """Every log in SwarmUI's order: the daemon's level logs (identifier ""), then one per backend, by id."""
    found: list[_Log] = [(level.name, level.color, "", level.ring) for level in logs.LEVEL_LOGS]
    for backend in fleet.backends():
        prefix = _LOG_NAME_PREFIXES.get(backend.type_id, backend.type_id)
        found.append((f"{prefix}-{backend.id}", _LOG_COLORS["backend"], f"{LOG_PREFIX}{backend.id}",
                      backend.ring))
    return found


def _types_available(found: list[_Log]) -> list[dict[str, str]]:
    return [{"name": name, "color": color, "identifier": identifier} for name, color, identifier, _ in found]


def _log_backends(found: list[_Log], keys: list[str]) -> dict[str, _Log]:
    """The logs `keys` ask for, by the key used: a log's name, or a backend log's identifier. Unknown keys
    are left out."""
    by_key: dict[str, _Log] = {log[2]: log for log in found if log[2]}
    by_key.update((log[0], log) for log in found)  # a name wins over an identifier
    return {key: by_key[key] for key in keys if key in by_key}


async def _wait_for_any(rings: Mapping[str, Any], after: Mapping[str, int], timeout: float) -> None:
    """Return when any ring has a line past its `after` mark, or after `timeout` seconds."""
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:

            async def wait_one(name: str, ring: Any) -> None:
                await ring.wait_after(after.get(name, -1))
                nursery.cancel_scope.cancel()

            for name, ring in rings.items():
                nursery.start_soon(wait_one, name, ring)


def _timestamp(epoch: float) -> str:
    """SwarmUI's "yyyy-MM-dd HH:mm:ss.fff", local time."""
    local = time.localtime(epoch)
    millis = int((epoch % 1) * 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", local) + f".{millis:03d}"


