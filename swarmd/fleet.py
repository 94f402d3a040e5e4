"""The Fleet: the one owner of every backend's definition, and the only place that changes one.

Theory of operation
-------------------
Every change -- an API mutation or a reload of the file -- runs under one lock, in three steps:

1. **validate**: the whole request is checked against the types' schemas before anything happens;
2. **write**: the new file text is made by editing the last text read (comments kept), checked by parsing
   it again, and written atomically. If the write fails nothing in memory has changed yet;
3. **apply**: only then are processes stopped, started or restarted, one supervisor per backend.

Before a mutation the file on disk is read again. If a person changed it since the daemon last read it,
their version is applied first and the mutation is made on top of it, so a hand edit is never lost; if
their version is invalid, the mutation is refused with the file's problem and the file is left alone.

A reload (`apply_file`) is a diff per backend id: unchanged -> untouched; only the title -> no restart;
type or settings -> that backend restarts (modcount+1); enabled flipped -> stop/start; added -> start;
removed -> stop; a backend whose id changed but nothing else keeps its process under the new id.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any, TypeVar

import trio

from swarmd import backends_file, gpu
from swarmd.backends_file import BackendDef, BackendsFile, Editor, FileInvalid
from swarmd.settings import SECRET_MASK, SettingError
from swarmd.supervise.output import OutputRing
from swarmd.supervise.process import Guardian
from swarmd.supervise.remote import RemoteMonitor
from swarmd.supervise.supervisor import BackendTask, Runtime, Supervisor
from swarmd.types import TYPES, BackendType

log = logging.getLogger("swarmd.fleet")
T = TypeVar("T")

#: One encoder for every backend object: json.dumps() with options builds a new encoder per call, which
#: was a sixth of a ListBackends of 1000 backends.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class FleetError(Exception):
    """A mutation was refused. `str(err)` is the message for the user (the API's {"error": ...})."""


class Backend:
    """One backend: its definition (owned by the Fleet), its runtime (owned by its supervisor) and its
    output ring (kept across restarts and edits)."""

    def __init__(self, definition: BackendDef, backend_type: BackendType) -> None:
        self.type = backend_type
        self.definition = definition
        self.runtime = Runtime()
        self.ring = OutputRing()
        self.modcount = 0
        self.supervisor: BackendTask | None = None
        self.last_free: dict[str, Any] | None = None

    @property
    def definition(self) -> BackendDef:
        return self._definition

    @definition.setter
    def definition(self, value: BackendDef) -> None:
        self._definition = value
        self._api_static: dict[str, Any] | None = None  # rebuilt on the next to_api()
        self._json_static: str | None = None  # ditto, encoded (see to_api_json)

    @property
    def id(self) -> int:
        return self.definition.id

    @property
    def type_id(self) -> str:
        return self.definition.type_id

    @property
    def title(self) -> str:
        return self.definition.title

    @property
    def enabled(self) -> bool:
        return self.definition.enabled

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.definition.settings)

    @property
    def status(self) -> str:
        return self.runtime.status

    @property
    def status_message(self) -> str:
        return self.runtime.status_message

    def label(self) -> str:
        return f"backend-{self.id}"

    @property
    def gpus(self) -> list[dict[str, Any]]:
        """The GPUs of its current start (resolved pin), as ListBackends shows them."""
        return self.runtime.pin.describe() if self.runtime.pid is not None else []

    def to_api_json(self, full_data: bool = False) -> str:
        """`to_api()` as JSON text. The definition's part is encoded once per definition and only the
        few changing fields each time: ListBackends of 1000 backends spent most of its time encoding."""
        static = self._json_static
        if static is None:
            fields = dict(self._api_static or self._static_api())
            del fields["status"], fields["modcount"]
            static = self._json_static = _encode(fields)[:-1]
        dynamic = {"status": self.runtime.status, "modcount": self.modcount}
        if full_data:
            dynamic.update(self._runtime_api())
        return f"{static},{_encode(dynamic)[1:]}"

    def _static_api(self) -> dict[str, Any]:
        definition, settings = self.definition, {}
        for spec in self.type.settings:
            value = definition.settings.get(spec.name, spec.default)
            settings[spec.name] = (SECRET_MASK if value else "") if spec.secret else value
        return {
            "type": definition.type_id,
            "status": "",
            "id": definition.id,
            "settings": settings,
            "modcount": 0,
            "features": list(self.type.features),
            "enabled": definition.enabled,
            "title": definition.title,
            "max_usages": self.type.max_usages(definition.settings),
            "seconds_since_used": 0,
            "time_since_used": "Never",
            "can_load_models": self.type.can_load_models,
        }

    def gpu_memory(self) -> int | None:
        """GPU memory held by its process group now (bytes); None without NVML or without a process."""
        if self.runtime.pid is None or not gpu.inventory().available:
            return None
        return gpu.memory_by_group().get(self.runtime.pid, 0)

    def to_api(self, full_data: bool = False) -> dict[str, Any]:
        """The SwarmUI backend object; `full_data` adds the current model and swarmd's runtime facts.

        The part that follows from the definition alone is built once per definition: ListBackends of a
        thousand backends is polled by the web UI and must stay cheap.
        """
        static = self._api_static
        if static is None:
            static = self._api_static = self._static_api()
        data: dict[str, Any] = {**static, "status": self.runtime.status, "modcount": self.modcount}
        if full_data:
            data.update(self._runtime_api())
        return data

    def _runtime_api(self) -> dict[str, Any]:
        runtime = self.runtime
        return {
            "current_model": None,
            "pid": runtime.pid,
            "port": runtime.port,
            "restarts": runtime.restarts,
            "last_exit": runtime.last_exit.to_api() if runtime.last_exit else None,
            "status_message": runtime.status_message,
            "gpus": self.gpus,
            "gpu_memory": self.gpu_memory(),
            "last_free": self.last_free,
        }


class Fleet:
    """Every backend of the daemon, keyed by id. See the module docstring for the rules of change."""

    def __init__(self, path: str, nursery: trio.Nursery, guardian: Guardian | None,
                 types: dict[str, BackendType] | None = None) -> None:
        self.path = path
        self.types = types if types is not None else TYPES
        self._nursery = nursery
        self._guardian = guardian
        self._lock = trio.Lock()
        self._backends: dict[int, Backend] = {}
        self._file: BackendsFile | None = None
        #: The round-trip document of `_file.text`, kept to edit without parsing again; None when it may
        #: have been changed by an edit that did not land.
        self._document: backends_file.Document | None = None
        self._next_id = 0
        #: The problem of the file on disk while it is invalid (the running fleet is the last good one).
        self.file_problem: str | None = None
        self._closing = False
        #: Supervisors whose stop ladder is running (detached from their backend, still alive).
        self._stopping: set[BackendTask] = set()
        self.on_change: Callable[[], None] = lambda: None

    # -- reading -----------------------------------------------------------------------------------------

    def backends(self) -> list[Backend]:
        return [self._backends[i] for i in sorted(self._backends)]

    def get(self, backend_id: int) -> Backend | None:
        return self._backends.get(backend_id)

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for backend in self._backends.values():
            counts[backend.status] = counts.get(backend.status, 0) + 1
        return counts

    # -- start and stop ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the file and start every enabled backend (in parallel). Raises FileInvalid or OSError."""
        loaded, document = await trio.to_thread.run_sync(backends_file.read_document, self.path)
        async with self._lock:
            self._file, self._document = loaded, document
            for definition in loaded.backends.values():
                self._backends[definition.id] = self._new_backend(definition)
                self._next_id = max(self._next_id, definition.id + 1)
            async with trio.open_nursery() as nursery:
                for backend in self._backends.values():
                    nursery.start_soon(self._start_backend, backend)
        log.info("loaded %s: %d backends", self.path, len(self._backends))

    async def shutdown(self) -> None:
        """Stop every backend in parallel, each by its stop ladder. Mutations are refused from now on (a
        backend added now would outlive the stop)."""
        self._closing = True
        async with trio.open_nursery() as nursery:
            for backend in list(self._backends.values()):
                nursery.start_soon(self._stop_backend, backend, "disabled", "Daemon stopping")

    def kill_all(self) -> None:
        """SIGKILL every backend's group now (a second SIGTERM/SIGINT while stopping), also those whose
        stop ladder is already running."""
        for supervisor in [b.supervisor for b in self._backends.values()] + list(self._stopping):
            if supervisor is not None:
                supervisor.kill_now()

    # -- mutations (the API's operations) ----------------------------------------------------------------

    async def add(self, type_id: str, *, title: str | None = None,
                  settings: dict[str, Any] | None = None) -> Backend:
        """Add a backend of `type_id` with default settings (plus `settings`, raw API values) under a new
        id that was never used. Raises FleetError."""
        backend_type = self.types.get(type_id) if isinstance(type_id, str) else None
        if backend_type is None:
            raise FleetError(f"Invalid backend type: {type_id}")

        async def body() -> Backend:
            values = backend_type.defaults()
            values.update(self._parse_api_settings(backend_type, settings or {}))
            new_id = self._next_id
            definition = BackendDef(new_id, type_id, title if title is not None else backend_type.name,
                                    True, values)

            # The file gets the settings that differ from the defaults: a new entry stays a few lines.
            written = {k: v for k, v in values.items() if v != backend_type.spec(k).default}

            def edit(editor: Editor) -> None:
                editor.set_backend(new_id, type_id=type_id, title=definition.title, enabled=True,
                                   settings=written)

            await self._write(edit, {**self._file_backends(), new_id: definition})
            self._next_id = new_id + 1
            backend = self._new_backend(definition)
            self._backends[new_id] = backend
            await self._start_backend(backend)
            log.info("added backend-%d (%s)", new_id, type_id)
            return backend

        return await self._mutate(body)

    async def edit(self, backend_id: int, *, title: str, settings: dict[str, Any],
                   new_id: int = -1) -> Backend:
        """Change a backend's title and settings (partial merge of raw API values) and maybe its id.

        Restarts it when its settings changed; modcount+1. Raises FleetError before anything changes.
        """
        if new_id == backend_id:
            new_id = -1

        async def body() -> Backend:
            if new_id >= 0 and new_id in self._backends:
                raise FleetError(f"Backend ID {new_id} is already in use.")
            if new_id < -1:
                raise FleetError(f"Invalid new backend ID {new_id}: it must be a non-negative integer.")
            backend = self._backends.get(backend_id)
            if backend is None:
                raise FleetError(f"Invalid backend ID {backend_id}")
            old = backend.definition
            changes = self._parse_api_settings(backend.type, settings)
            merged = {**old.settings, **changes}
            target_id = new_id if new_id >= 0 else backend_id
            definition = BackendDef(target_id, old.type_id, str(title), old.enabled, merged)
            changed_settings = {k: v for k, v in changes.items() if old.settings.get(k) != v}

            def edit(editor: Editor) -> None:
                if target_id != backend_id:
                    editor.rename_backend(backend_id, target_id)
                editor.set_backend(target_id, title=definition.title, settings=changed_settings)

            defs = self._file_backends()
            del defs[backend_id]
            await self._write(edit, {**defs, target_id: definition})
            if target_id != backend_id:
                del self._backends[backend_id]
                self._backends[target_id] = backend
                self._next_id = max(self._next_id, target_id + 1)
            backend.modcount += 1
            restart = not old.same_process(definition)
            backend.definition = definition
            if restart:
                await self._restart_with_new_definition(backend)
            elif backend.supervisor is not None:
                backend.supervisor.reset_counters()
            return backend

        return await self._mutate(body)

    async def delete(self, backend_id: int) -> bool:
        """Delete a backend; returns after its process has stopped. False when there was none."""
        async def body() -> bool:
            backend = self._backends.get(backend_id)
            if backend is None:
                return False
            defs = self._file_backends()
            del defs[backend_id]
            await self._write(lambda editor: editor.delete_backend(backend_id), defs)
            del self._backends[backend_id]
            await self._stop_backend(backend, "disabled", "Deleted")
            log.info("deleted backend-%d", backend_id)
            return True

        return await self._mutate(body)

    async def toggle(self, backend_id: int, enabled: bool) -> bool:
        """Enable or disable a backend. True when it changed; False for "No change."."""
        async def body() -> bool:
            backend = self._backends.get(backend_id)
            if backend is None:
                raise FleetError(f"Invalid backend ID {backend_id}")
            if backend.enabled == enabled:
                return False
            definition = _replace(backend.definition, enabled=enabled)
            await self._write(lambda editor: editor.set_backend(backend_id, enabled=enabled),
                              {**self._file_backends(), backend_id: definition})
            backend.definition = definition
            if enabled:
                await self._start_backend(backend)
            else:
                await self._stop_backend(backend, "disabled", "Disabled")
            return True

        return await self._mutate(body)

    async def restart(self, target: str = "all") -> int:
        """Restart the running or errored backends named by `target` ("all" or an id), in parallel."""
        if self._closing:
            raise FleetError("swarmd is stopping: changes are refused")
        chosen = [b for b in self._targets(target) if b.status in ("running", "errored")]
        async with trio.open_nursery() as nursery:
            for backend in chosen:
                nursery.start_soon(self._restart_backend, backend)
        return len(chosen)

    async def free_memory(self, target: str = "all", system_ram: bool = False) -> tuple[bool, int]:
        """Ask each running backend named by `target` to free memory, in parallel. Returns (any targeted,
        how many succeeded). A backend without a free hook is not counted."""
        chosen = [b for b in self._targets(target) if b.status == "running" and b.supervisor is not None]
        if not chosen:
            return False, 0
        results: list[bool] = []

        async def free(backend: Backend) -> None:
            assert backend.supervisor is not None
            gpu.forget_cache()
            before = backend.gpu_memory()
            ok = await backend.supervisor.free_memory(system_ram)
            after = await _memory_after_free(backend, before) if ok else before
            backend.last_free = {"time": time.time(), "system_ram": system_ram, "ok": ok,
                                 "gpu_memory_before": before, "gpu_memory_after": after}
            if before is not None:
                log.info("free memory: %s %s, GPU memory %s -> %s", backend.label(),
                         "freed" if ok else "failed", _mib(before), _mib(after))
            results.append(ok)

        async with trio.open_nursery() as nursery:
            for backend in chosen:
                nursery.start_soon(free, backend)
        count = sum(results)
        log.info("free memory (system_ram=%s): %d of %d backends freed", system_ram, count, len(chosen))
        return True, count

    # -- reload ------------------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Apply the file on disk if it changed. Returns True when something was applied. An invalid file
        sets `file_problem` (and is logged) and changes nothing."""
        async with self._lock:
            return await self._sync_with_disk(refuse_invalid=False)

    # -- internals ---------------------------------------------------------------------------------------

    def _targets(self, target: Any) -> list[Backend]:
        text = str(target).strip()
        if text.lower() in ("all", ""):
            return self.backends()
        return [b for b in self.backends() if str(b.id) == text]

    def _new_backend(self, definition: BackendDef) -> Backend:
        backend = Backend(definition, self.types[definition.type_id])
        if not definition.enabled:
            backend.runtime.status, backend.runtime.status_message = "disabled", "Disabled"
        return backend

    def _parse_api_settings(self, backend_type: BackendType, raw: dict[str, Any]) -> dict[str, Any]:
        """Raw API values -> typed values, SwarmUI's way: case-sensitive names, unknown ones ignored, the
        secret mask keeps the old value. Raises FleetError naming the first bad setting."""
        if not isinstance(raw, dict):
            raise FleetError("Missing settings.")
        parsed: dict[str, Any] = {}
        for name, value in raw.items():
            spec = backend_type.spec(name)
            if spec is None:
                continue
            if spec.secret and value == SECRET_MASK:
                continue
            try:
                parsed[name] = spec.from_api(value)
            except SettingError as err:
                raise FleetError(f"Invalid value for setting '{name}': {err}") from None
        return parsed

    async def _mutate(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run one mutation under the lock, on top of the file as it is on disk now.

        `body` validates, calls `_write` and only then changes memory and processes. If a person saves
        the file between our read and our write, `_write` raises Conflict before anything changed: their
        version is applied and the mutation is made again on top of it.
        """
        async with self._lock:
            if self._closing:
                raise FleetError("swarmd is stopping: changes are refused")
            for _ in range(10):
                await self._sync_with_disk()
                try:
                    return await body()
                except backends_file.Conflict:
                    log.info("the backends file changed on disk during a change: applying it first")
            raise FleetError(f"{self.path} kept changing on disk while applying the change; nothing was "
                             "changed. Try again.")

    def _file_backends(self) -> dict[int, BackendDef]:
        assert self._file is not None
        return dict(self._file.backends)

    async def _write(self, change: Callable[[Editor], None], backends: dict[int, BackendDef]) -> None:
        """Edit the last text read, write it atomically (compare-and-swap against that text).

        `backends` are the definitions the new text declares (the mutation validated them). Raises
        FleetError, or backends_file.Conflict when the file changed on disk meanwhile; on any failure
        the file and the fleet are as they were.
        """
        assert self._file is not None
        document, self._document = self._document, None  # edited in place: stale if the write fails
        editor = Editor(self.path, self._file.text, document)
        change(editor)
        text = editor.render()
        data = text.encode()
        try:
            await trio.to_thread.run_sync(backends_file.atomic_write, self.path, text, self._file.digest)
        except OSError as err:
            reason = err.strerror or str(err)
            raise FleetError(f"Could not write {self.path}: {reason}. Nothing was changed.") from None
        self._file = BackendsFile(self.path, text, backends_file.digest_of(data),
                                  MappingProxyType(dict(sorted(backends.items()))))
        self._document = editor.document

    async def _sync_with_disk(self, refuse_invalid: bool = True) -> bool:
        """Make the fleet match the file on disk when it changed since we last read or wrote it.

        With `refuse_invalid`, an invalid file raises FleetError naming its first problem (a mutation
        must not write over a person's unfinished edit). Returns True when a new version was applied.
        """
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            # Deleted under us: keep running; the next write recreates it from the last good text.
            return False
        except OSError as err:
            if refuse_invalid:
                raise FleetError(f"Cannot read {self.path}: {err.strerror}") from None
            log.error("cannot read %s: %s", self.path, err.strerror)
            return False
        if self._file is not None and backends_file.digest_of(data) == self._file.digest:
            if self.file_problem is not None:
                self.file_problem = None
            return False
        try:
            loaded, document = await trio.to_thread.run_sync(backends_file.parse_document, self.path, data,
                                                            self.types)
        except FileInvalid as err:
            first = str(err.problems[0])
            more = f" (and {len(err.problems) - 1} more)" if len(err.problems) > 1 else ""
            if self.file_problem != str(err):
                for problem in err.problems:
                    log.error("%s", problem)
            self.file_problem = str(err)
            self.on_change()
            if refuse_invalid:
                raise FleetError(f"The backends file is invalid, fix it first: {first}{more}") from None
            return False
        self.file_problem = None
        self._document = document
        await self._apply_file(loaded)
        return True

    async def _apply_file(self, loaded: BackendsFile) -> None:
        """Diff the new file against the fleet per backend id and apply only what changed."""
        old_defs = {b.id: b.definition for b in self._backends.values()}
        new_defs = dict(loaded.backends)
        self._file = loaded
        renames = _find_renames(old_defs, new_defs)
        actions: list[Callable[[], Awaitable[None]]] = []
        for old_id, new_id in renames.items():
            backend = self._backends.pop(old_id)
            backend.definition = new_defs[new_id]
            self._backends[new_id] = backend
            log.info("backend-%d is now backend-%d (same process)", old_id, new_id)
        for backend_id in [i for i in old_defs if i not in new_defs and i not in renames]:
            backend = self._backends.pop(backend_id)
            actions.append(lambda b=backend: self._stop_backend(b, "disabled", "Removed from the file"))
            log.info("backend-%d removed from the file", backend_id)
        for backend_id, definition in new_defs.items():
            self._next_id = max(self._next_id, backend_id + 1)
            if backend_id in renames.values():
                continue
            backend = self._backends.get(backend_id)
            if backend is None:
                backend = self._new_backend(definition)
                self._backends[backend_id] = backend
                actions.append(lambda b=backend: self._start_backend(b))
                log.info("backend-%d added in the file", backend_id)
                continue
            old = backend.definition
            if old == definition:
                continue
            backend.definition = definition
            if old.same_process(definition):
                continue  # only the title changed
            if old.type_id != definition.type_id:
                backend.type = self.types[definition.type_id]
            if old.enabled and not definition.enabled:
                actions.append(lambda b=backend: self._stop_backend(b, "disabled", "Disabled in the file"))
            elif definition.enabled and not old.enabled:
                actions.append(lambda b=backend: self._start_backend(b))
            else:
                backend.modcount += 1
                actions.append(lambda b=backend: self._restart_with_new_definition(b))
            log.info("backend-%d changed in the file", backend_id)
        async with trio.open_nursery() as nursery:
            for action in actions:
                nursery.start_soon(action)
        log.info("reloaded %s: %d backends, %d changes applied", self.path, len(self._backends),
                 len(actions) + len(renames))
        self.on_change()

    def _place_gpus(self, backend: Backend, gpu_id: str) -> gpu.Pin:
        """The pin for one start: explicit pins resolved; `auto` placed among the GPUs with the fewest
        backends now (this one's previous GPU not counted). Raises PinError."""
        if str(gpu_id).strip() != "auto":
            return gpu.resolve(gpu_id)
        counts: dict[str, int] = {}
        for other in self._backends.values():
            if other is backend or other.runtime.pid is None:
                continue
            for device in other.runtime.pin.gpus:
                counts[device.uuid] = counts.get(device.uuid, 0) + 1
        return gpu.place_auto(counts)

    async def _start_backend(self, backend: Backend) -> None:
        """Start a supervisor for an enabled, self-starting backend (no-op otherwise)."""
        if not backend.enabled:
            backend.runtime.status, backend.runtime.status_message = "disabled", "Disabled"
            return
        if backend.supervisor is not None:
            return
        backend.runtime.status, backend.runtime.status_message = "waiting", "Waiting to load..."
        supervisor: BackendTask
        if backend.type.self_starting:
            supervisor = Supervisor(label=backend.label, backend_type=backend.type,
                                    settings=backend.settings, runtime=backend.runtime, ring=backend.ring,
                                    guardian=self._guardian, on_change=self.on_change,
                                    place_gpus=lambda gpu_id: self._place_gpus(backend, gpu_id))
        else:
            supervisor = RemoteMonitor(label=backend.label, backend_type=backend.type,
                                       settings=backend.settings, runtime=backend.runtime,
                                       ring=backend.ring, on_change=self.on_change)
        backend.supervisor = supervisor
        await self._nursery.start(supervisor.run)

    async def _stop_backend(self, backend: Backend, status: str, message: str) -> None:
        supervisor, backend.supervisor = backend.supervisor, None
        if supervisor is not None:
            self._stopping.add(supervisor)
            try:
                await supervisor.stop()
            finally:
                self._stopping.discard(supervisor)
        backend.runtime.status, backend.runtime.status_message = status, message
        backend.runtime.pid = None
        self.on_change()

    async def _restart_with_new_definition(self, backend: Backend) -> None:
        await self._stop_backend(backend, "waiting", "Restarting with new settings")
        await self._start_backend(backend)

    async def _restart_backend(self, backend: Backend) -> None:
        if backend.supervisor is not None:
            await backend.supervisor.restart()
        elif backend.enabled:
            await self._start_backend(backend)


async def _memory_after_free(backend: Backend, before: int | None) -> int | None:
    """GPU memory after a free call. Backends free asynchronously (ComfyUI unloads on its next loop), so
    wait up to two seconds for the figure to drop before recording it."""
    if before is None:
        return None
    after = before
    with trio.move_on_after(2.0):
        while True:
            gpu.forget_cache()
            after = await trio.to_thread.run_sync(backend.gpu_memory) or 0
            if after < before:
                break
            await trio.sleep(0.1)
    return after


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**20:.0f} MiB"


def _replace(definition: BackendDef, **changes: Any) -> BackendDef:
    fields = {"id": definition.id, "type_id": definition.type_id, "title": definition.title,
              "enabled": definition.enabled, "settings": dict(definition.settings)}
    fields.update(changes)
    return BackendDef(**fields)


def _find_renames(old: dict[int, BackendDef], new: dict[int, BackendDef]) -> dict[int, int]:
    """Backends that only changed id (same type, settings, enabled state): old id -> new id."""
    gone = [i for i in old if i not in new]
    fresh = [i for i in new if i not in old]
    renames: dict[int, int] = {}
    for old_id in gone:
        for new_id in fresh:
            if new_id not in renames.values() and old[old_id].same_process(new[new_id]):
                renames[old_id] = new_id
                break
    return renames


def default_backends_path() -> str:
    return os.environ.get("SWARMD_BACKENDS", "/etc/swarmd/backends.yaml")
