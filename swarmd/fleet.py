"""The Fleet: the one owner of every backend's definition, and the only place that changes one.

Theory of operation
-------------------
Every change -- an API mutation or a reload of the file -- is planned under one lock, in three steps:

1. **validate**: the whole request is checked against the types' schemas before anything happens;
2. **write**: the backends file is edited (only the entries that change, comments kept), the new text is
   parsed and validated, then written atomically with a compare-and-swap (`backends_file.BackendsStore`,
   in a worker thread). If the write fails nothing in memory has changed yet;
3. **apply**: the definitions the written text parses to are adopted -- memory always equals the file,
   so a reload right after our own write changes nothing -- and `plan.plan(old, new)` says which
   backends start, stop, restart or are renamed. Applying is synchronous: it feeds events to each
   backend's shell and returns. The slow parts (a stop ladder of a backend that ignores SIGTERM) run in
   that backend's own tasks after the lock is released; a later change to the same backend is simply the
   next event for its lifecycle, and the other backends never wait for it.

Before a mutation the file on disk is read again. If a person changed it since the daemon last read it,
their version is applied first and the mutation is made on top of it, so a hand edit is never lost; if
their version is invalid, the mutation is refused with the file's problem and the file is left alone.

Nothing blocking runs on the event loop here: reading, parsing, rendering and writing the file happen in
worker threads (abandoned, not awaited, when the daemon stops), GPU placement uses the inventory taken at
start. `shutdown()` does not take the lock: SIGTERM acts at once, whatever a mutation or reload is doing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import trio

from swarmd import gpu
from swarmd.backends_file import (
    BackendDef,
    BackendsFile,
    BackendsStore,
    Change,
    Conflict,
    DeleteBackend,
    FileInvalid,
    LockTimeout,
    RenameBackend,
    SetBackend,
)
from swarmd.plan import Action, Add, Disable, Enable, Reconfigure, Remove, Rename, Retitle, plan
from swarmd.secrets import unmask_text
from swarmd.settings import SECRET_MASK, SettingError, check_text, check_title, mapping_to_lines
from swarmd.supervise.lifecycle import (
    GpuFailed,
    KillRequested,
    Lifecycle,
    Reconfigured,
    RestartRequested,
    StartRequested,
    StopRequested,
)
from swarmd.supervise.output import RING_BYTES, RING_LINES, OutputRing
from swarmd.supervise.pipes import PipeReader
from swarmd.supervise.process import ChildProcess, Guardian
from swarmd.supervise.shell import BackendShell, Spawner
from swarmd.supervise.stats import FleetStats
from swarmd.supervise.timers import Timers
from swarmd.types import TYPES, BackendType

log = logging.getLogger("swarmd.fleet")
T = TypeVar("T")

#: How many times a mutation is retried when the file keeps changing on disk under it.
CONFLICT_RETRIES = 10


class FleetError(Exception):
    """A mutation was refused. `str(err)` is the message for the user (the API's {"error": ...})."""


class Backend:
    """One backend: its definition (owned by the Fleet), its shell (which owns its process and, through
    its lifecycle, its status) and its output ring (kept across restarts and edits)."""

    __slots__ = ("definition", "type", "shell", "ring", "modcount", "last_free", "api_cache", "api_runtime",
                 "__weakref__")

    def __init__(self, definition: BackendDef, backend_type: BackendType, shell: BackendShell,
                 ring: OutputRing) -> None:
        self.definition = definition
        self.type = backend_type
        self.shell = shell
        self.ring = ring
        self.modcount = 0
        self.last_free: dict[str, Any] | None = None
        self.api_cache: Any = None  # swarmd.api.shape keeps the encoded part of its answer here
        self.api_runtime: Any = None  # ... and its encoded runtime facts (full_data), with their key

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
    def lifecycle(self) -> Lifecycle:
        return self.shell.machine

    @property
    def status(self) -> str:
        return self.shell.machine.status

    @property
    def status_message(self) -> str:
        return self.shell.machine.message

    @property
    def pid(self) -> int | None:
        return self.shell.machine.pid

    def label(self) -> str:
        return f"backend-{self.id}"

    def gpu_memory(self) -> int | None:
        """GPU memory held by its process group at the last refresh (bytes); None without NVML or process."""
        pid = self.pid
        return None if pid is None else gpu.memory_of(pid)


class Fleet:
    """Every backend of the daemon, keyed by id. See the module docstring for the rules of change."""

    def __init__(self, path: str, nursery: trio.Nursery, guardian: Guardian | None = None, *,
                 types: dict[str, BackendType] | None = None, spawner: Spawner | None = None,
                 ring_lines: int = RING_LINES, ring_bytes: int = RING_BYTES) -> None:
        """`ring_lines`/`ring_bytes`: the bounds of each backend's output ring (the daemon config's)."""
        self.path = path
        self._ring_bounds = (ring_lines, ring_bytes)
        self.types = types if types is not None else TYPES
        self.store = BackendsStore(path, self.types)
        self._nursery = nursery
        pipes = PipeReader(nursery)  # one task reads every backend's output
        self._timers = Timers(nursery)  # and one fires every backend's timers
        self._spawner: Spawner = spawner or (lambda spec: ChildProcess.start(spec, guardian, pipes))
        self._lock = trio.Lock()
        self._backends: dict[int, Backend] = {}
        self._next_id = 0
        #: The problem of the file on disk while it is invalid (the running fleet is the last good one).
        self.file_problem: str | None = None
        self._closing = False
        self.on_change: Callable[[], None] = lambda: None
        self.stats = FleetStats()  # reloads, writes, refusals: read by swarmd.metrics

    # -- reading -----------------------------------------------------------------------------------------

    def backends(self) -> list[Backend]:
        return [self._backends[i] for i in sorted(self._backends)]

    def get(self, backend_id: int) -> Backend | None:
        return self._backends.get(backend_id)

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for backend in self._backends.values():
            status = backend.status
            counts[status] = counts.get(status, 0) + 1
        return counts

    # -- start and stop ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the file and start every enabled backend, and watch the GPUs they run on (a task of the
        Fleet's nursery; nothing to watch without NVML). Raises FileInvalid or OSError."""
        async with self._lock:
            loaded = await _in_thread(self.store.load)
            self._adopt(loaded)
        log.info("loaded %s: %d backends", self.path, len(self._backends))
        self._nursery.start_soon(gpu.watch_health, self._gpu_failed)

    async def shutdown(self) -> None:
        """Stop every backend in parallel, each by its stop ladder, and return once all are stopped.
        Mutations are refused from now on. Takes no lock: a mutation or reload in progress never delays
        it, and what it would still apply is dropped."""
        self._closing = True
        backends = list(self._backends.values())
        for backend in backends:
            backend.shell.feed(StopRequested("Daemon stopping"))
        async with trio.open_nursery() as nursery:
            for backend in backends:
                nursery.start_soon(backend.shell.wait_at_rest)

    def kill_all(self) -> None:
        """SIGKILL every backend's process group now (a second SIGTERM/SIGINT while stopping)."""
        for backend in self._backends.values():
            backend.shell.feed(KillRequested())

    # -- mutations (the API's operations) ----------------------------------------------------------------

    async def add(self, type_id: str, *, title: str | None = None,
                  settings: dict[str, Any] | None = None) -> Backend:
        """Add a backend of `type_id` with default settings (plus `settings`, raw API values) under a new
        id that was never used; its title is empty unless given, as SwarmUI's. Raises FleetError."""
        backend_type = self.types.get(type_id) if isinstance(type_id, str) else None
        if backend_type is None:
            raise FleetError(f"Invalid backend type: {type_id}")

        def change() -> tuple[list[Change], dict[int, int]]:
            values = {**backend_type.defaults(), **self._parse_api_settings(backend_type, settings or {})}
            # The file gets the settings that differ from the defaults: a new entry stays a few lines.
            written = {k: v for k, v in values.items() if v != backend_type.spec(k).default}
            text = _checked_title("" if title is None else title)
            return [SetBackend(self._next_id, type_id=type_id, title=text, enabled=True, settings=written)], {}

        ids, _ = await self._mutate(change)
        backend = self._backends[ids[0]]
        log.info("added %s (%s)", backend.label(), type_id)
        return backend

    async def edit(self, backend_id: int, *, title: str, settings: dict[str, Any],
                   new_id: int = -1) -> Backend:
        """Change a backend's title and settings (partial merge of raw API values) and maybe its id (a
        `new_id` below 0 means "keep it", as in SwarmUI).

        As SwarmUI's Save, an edit always restarts the backend -- a clean stop, then a start with the new
        settings -- even when nothing changed (people press Save to force a reload); modcount+1. Raises
        FleetError before anything changes.
        """
        if new_id == backend_id or new_id < 0:
            new_id = -1
        target_id = new_id if new_id >= 0 else backend_id

        def change() -> tuple[list[Change], dict[int, int]]:
            if new_id >= 0 and new_id in self._backends:
                raise FleetError(f"Backend ID {new_id} is already in use.")
            backend = self._backends.get(backend_id)
            if backend is None:
                raise FleetError(f"Invalid backend ID {backend_id}")
            old = backend.definition
            changes = self._parse_api_settings(backend.type, settings, stored=old.settings)
            changed = {k: v for k, v in changes.items() if old.settings.get(k) != v}
            edits: list[Change] = []
            if target_id != backend_id:
                edits.append(RenameBackend(backend_id, target_id))
            edits.append(SetBackend(target_id, title=_checked_title(title), settings=changed))
            return edits, ({backend_id: target_id} if target_id != backend_id else {})

        _, actions = await self._mutate(change)
        backend = self._backends[target_id]
        if Reconfigure(target_id) not in actions:  # the same settings: restart it all the same
            backend.modcount += 1
            backend.shell.feed(RestartRequested())
        log.info("edited %s: restarting it", backend.label())
        return backend

    async def delete(self, backend_id: int) -> bool:
        """Delete a backend; returns after its process has stopped. False when there was none."""
        deleted: list[Backend] = []

        def change() -> tuple[list[Change], dict[int, int]]:
            deleted[:] = [self._backends[backend_id]] if backend_id in self._backends else []
            return ([DeleteBackend(backend_id)] if deleted else []), {}

        ids, _ = await self._mutate(change)
        if not ids:
            return False
        await deleted[0].shell.wait_at_rest()
        log.info("deleted backend-%d", backend_id)
        return True

    async def toggle(self, backend_id: int, enabled: bool) -> bool:
        """Enable or disable a backend. True when it changed; False for "No change.". A disable returns
        once its process has stopped."""
        toggled: list[Backend] = []

        def change() -> tuple[list[Change], dict[int, int]]:
            backend = self._backends.get(backend_id)
            if backend is None:
                raise FleetError(f"Invalid backend ID {backend_id}")
            toggled[:] = [backend]
            if backend.enabled == enabled:
                return [], {}
            return [SetBackend(backend_id, enabled=enabled)], {}

        ids, _ = await self._mutate(change)
        if not ids:
            return False
        log.info("%s backend-%d", "enabled" if enabled else "disabled", backend_id)
        if not enabled:
            await toggled[0].shell.wait_at_rest()
        return True

    async def restart(self, target: str = "all", *, force: bool = False) -> list[Backend]:
        """Restart the backends named by `target` ("all" or an id): the running or errored ones, as
        SwarmUI; with `force` (swarmd's own) also those loading or waiting -- a hung start can be cleared.
        Disabled backends never start. Returns the backends restarted."""
        if self._closing:
            raise FleetError("swarmd is stopping: changes are refused")
        statuses = ("running", "errored", "loading", "waiting", "idle") if force else ("running", "errored")
        chosen = [b for b in self._targets(target) if b.status in statuses and b.enabled]
        for backend in chosen:
            backend.shell.feed(RestartRequested())
        return chosen

    async def free_memory(self, target: str = "all", system_ram: bool = False) -> tuple[bool, int]:
        """Ask each running backend named by `target` to free memory, in parallel. Returns (any targeted,
        how many succeeded). A backend without a free hook is not counted."""
        chosen = [b for b in self._targets(target) if b.status == "running"]
        if not chosen:
            return False, 0
        results: list[bool] = []

        async def free(backend: Backend) -> None:
            await gpu.refresh(max_age=0)
            before = backend.gpu_memory()
            ok = await backend.shell.free_memory(system_ram)
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
            if self._closing:
                return False
            return await self._sync_with_disk(refuse_invalid=False)

    # -- internals ---------------------------------------------------------------------------------------

    def _targets(self, target: str) -> list[Backend]:
        """SwarmUI's targets: exactly "all", or an id's decimal text (not "ALL", "", " 0" or "00")."""
        if target == "all":
            return self.backends()
        return [b for b in self.backends() if str(b.id) == target]

    def _parse_api_settings(self, backend_type: BackendType, raw: dict[str, Any],
                            stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Raw API values -> typed values, SwarmUI's way (case-sensitive names; the secret mask keeps the old
        value) -- except that a name the type does not have is an error naming the nearest known one, where
        SwarmUI ignores it (a misspelled key would otherwise "succeed" and change nothing). Raises
        FleetError naming the first bad setting.

        Values sent back as a caller without the admin role was shown them (`api.shape`: env values and
        credentials as SECRET_MASK) keep what is stored: a secret setting or a text that is the mask alone is
        left out (the stored value stays); a text that is the masked view of the stored one is the stored
        one; a line holding the mask is the stored line it stands for (in `env`, `KEY=\\t<secret>` is the
        stored line of KEY). `stored` is the backend's stored settings (None for a new backend).
        A mask that stands for nothing stored (a new backend, a new key) is refused, never saved.
        """
        if not isinstance(raw, dict):
            raise FleetError("Missing settings.")
        parsed: dict[str, Any] = {}
        for name, value in raw.items():
            try:
                check_text(name)
            except SettingError as err:
                raise FleetError(f"Invalid setting name: {err}") from None
            spec = backend_type.spec(name)
            if spec is None:
                raise FleetError(backend_type.unknown_setting_message(name))
            if (spec.secret or spec.kind == "text") and value == SECRET_MASK:
                continue
            try:
                if spec.kind == "text" and isinstance(value, dict) and spec.mapping_ok:
                    value = mapping_to_lines(value, name)
                if spec.kind == "text" and isinstance(value, str) and SECRET_MASK in value:
                    old = stored.get(name) if stored is not None else None
                    value = unmask_text(value, old if isinstance(old, str) else None, env=spec.mapping_ok)
                    if value is None:
                        raise SettingError("it holds the secret mask (\\t<secret>) where no stored value is "
                                           "known: send the value itself")
                parsed[name] = spec.from_api(value)
            except SettingError as err:
                raise FleetError(f"Invalid value for setting '{name}': {err}") from None
        return parsed

    async def _mutate(self, change: Callable[[], tuple[list[Change], dict[int, int]]]
                      ) -> tuple[list[int], Sequence[Action]]:
        """Make one change of the file under the lock, on top of the file as it is on disk now, and apply
        it. `change()` validates (raising FleetError) and says what to write and which ids move. Returns
        the ids the change names and the actions applied (both empty when there was nothing to change).

        The work runs in the Fleet's own nursery, to its end even when the caller is cancelled (a client
        that hangs up): once the file is being written, memory must follow it.
        """
        done = trio.Event()
        box: list[Any] = []

        async def run() -> None:
            try:
                box.append(await self._mutate_locked(change))
            except Exception as err:
                box.append(err)
            finally:
                done.set()

        self._nursery.start_soon(run)
        await done.wait()
        if not box:  # cancelled with the daemon's nursery
            raise FleetError("swarmd is stopping: the change was interrupted")
        if isinstance(box[0], Exception):
            if isinstance(box[0], FleetError):
                self.stats.mutations_refused += 1
            raise box[0]
        return box[0]

    async def _mutate_locked(self, change: Callable[[], tuple[list[Change], dict[int, int]]]
                             ) -> tuple[list[int], Sequence[Action]]:
        async with self._lock:
            self._refuse_if_closing()
            for _ in range(CONFLICT_RETRIES):
                await self._sync_with_disk(refuse_invalid=True)
                changes, moves = change()
                if not changes:
                    return [], []
                try:
                    written = await _in_thread(self.store.write, changes)
                except Conflict:
                    log.info("the backends file changed on disk during a change: applying it first")
                    continue
                except LockTimeout as err:
                    raise FleetError(str(err)) from None
                except FileInvalid as err:
                    raise FleetError(f"Refused: the change would make the backends file invalid: "
                                     f"{err.problems[0]}") from None
                except ValueError as err:  # an id the file does not have (validated above: a bug if seen)
                    raise FleetError(f"Refused: {err}. Nothing was changed.") from None
                except OSError as err:
                    reason = err.strerror or str(err)
                    raise FleetError(f"Could not write {self.path}: {reason}. Nothing was changed.") from None
                self.stats.file_writes += 1
                self._refuse_if_closing()
                actions = self._adopt(written, moves)
                return [c.new_id if isinstance(c, RenameBackend) else c.id for c in changes], actions
            raise FleetError(f"{self.path} kept changing on disk while applying the change; nothing was "
                             "changed. Try again.")

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise FleetError("swarmd is stopping: changes are refused")

    async def _sync_with_disk(self, refuse_invalid: bool = True) -> bool:
        """Make the fleet match the file on disk when it changed since we last read or wrote it.

        With `refuse_invalid`, an invalid or unreadable file raises FleetError naming its first problem (a
        mutation must not write over a person's unfinished edit). Returns True when a new version was
        applied.
        """
        try:
            loaded = await _in_thread(self.store.read_if_changed)
        except FileInvalid as err:
            first = str(err.problems[0])
            more = f" (and {len(err.problems) - 1} more)" if len(err.problems) > 1 else ""
            if self.file_problem != str(err):
                for problem in err.problems:
                    log.error("%s", problem)
            self.file_problem = str(err)
            self.stats.reloads_failed += 1
            self.on_change()
            if refuse_invalid:
                raise FleetError(f"The backends file is invalid, fix it first: {first}{more}") from None
            return False
        except OSError as err:
            self.stats.reloads_failed += 1
            if refuse_invalid:
                raise FleetError(f"Cannot read {self.path}: {err.strerror or err}") from None
            log.error("cannot read %s: %s", self.path, err.strerror or err)
            return False
        if self.file_problem is not None:
            self.file_problem = None
            self.on_change()
        if loaded is None or self._closing:
            return False
        actions = self._adopt(loaded)
        self.stats.reloads += 1
        log.info("reloaded %s: %d backends, %d changes applied", self.path, len(self._backends), len(actions))
        return True

    def _adopt(self, loaded: BackendsFile, moves: dict[int, int] | None = None) -> Sequence[Action]:
        """Make the fleet what `loaded` (just read or written) declares. Synchronous: processes start and
        stop in their backends' own tasks."""
        old = {backend_id: backend.definition for backend_id, backend in self._backends.items()}
        actions = plan(old, loaded.backends, moves)
        new = loaded.backends
        moved = {}
        for action in actions:
            if isinstance(action, Rename):
                moved[action.new_id] = self._backends.pop(action.old_id)
        self._backends.update(moved)
        for action in actions:
            match action:
                case Rename(old_id=old_id, new_id=new_id):
                    backend = self._backends[new_id]
                    backend.definition = new[new_id]
                    backend.shell.label = backend.label()
                    log.info("backend-%d is now backend-%d (same process)", old_id, new_id)
                case Remove(id=backend_id):
                    self._backends.pop(backend_id).shell.feed(StopRequested("Deleted"))
                    log.info("backend-%d removed", backend_id)
                case Add(id=backend_id):
                    backend = self._backends[backend_id] = self._new_backend(new[backend_id])
                    if backend.enabled:
                        backend.shell.feed(StartRequested())
                case Retitle(id=backend_id):
                    self._backends[backend_id].definition = new[backend_id]
                case Disable(id=backend_id):
                    backend = self._backends[backend_id]
                    backend.definition = new[backend_id]
                    backend.shell.feed(StopRequested("Disabled"))
                case Reconfigure(id=backend_id):
                    backend = self._backends[backend_id]
                    backend.definition = definition = new[backend_id]
                    backend.type = self.types[definition.type_id]
                    backend.modcount += 1
                    backend.shell.feed(Reconfigured(backend.shell.configure(backend.type, definition.settings)))
                case Enable(id=backend_id):
                    backend = self._backends[backend_id]
                    backend.definition = new[backend_id]
                    backend.shell.feed(StartRequested())
        if new:
            self._next_id = max(self._next_id, max(new) + 1)
        self.on_change()
        return actions

    def _new_backend(self, definition: BackendDef) -> Backend:
        backend_type = self.types[definition.type_id]
        ring = OutputRing(*self._ring_bounds)
        shell = BackendShell(
            # the definition's read-only settings as they are: a copy would cost ~800 B per backend
            label=f"backend-{definition.id}", backend_type=backend_type, settings=definition.settings,
            ring=ring, nursery=self._nursery, spawner=self._spawner, place_gpus=self._place_gpus,
            on_change=self._changed, timers=self._timers)
        return Backend(definition, backend_type, shell, ring)

    def _changed(self) -> None:
        self.on_change()

    def _gpu_failed(self, failure: gpu.GpuFailure) -> None:
        """A GPU failed (`gpu.watch_health`): every backend whose process runs on it is told, and its
        lifecycle decides (a running one is stopped by its ladder, the restart policy applies; `auto`
        places the next start elsewhere, an explicit pin to that GPU fails the start)."""
        hit = [backend for backend in self.backends()
               if backend.pid is not None and failure.uuid in gpu.pinned_uuids(backend.shell.pin)]
        log.error("GPU %s failed (%s): %s", failure.label(), failure.reason,
                  f"backends on it: {', '.join(b.label() for b in hit)}" if hit else "no backend runs on it")
        for backend in hit:
            backend.shell.feed(GpuFailed(failure.label(), failure.reason))

    def _place_gpus(self, gpu_id: str, shell: BackendShell) -> gpu.Pin:
        """The pin of one start of `shell`'s backend: explicit pins resolved; `auto` placed among the GPUs
        with the fewest other backends running on them now. Raises PinError."""
        counts: dict[str, int] = {}
        if gpu_id.strip() == "auto":  # only `auto` needs to know the others (a walk of every backend)
            for other in self._backends.values():
                if other.shell is shell or other.pid is None:
                    continue
                for device in other.shell.pin.gpus:
                    counts[device.uuid] = counts.get(device.uuid, 0) + 1
        return gpu.place(gpu_id, counts)


def _checked_title(title: Any) -> str:
    try:
        return check_title(title)
    except SettingError as err:
        raise FleetError(f"Invalid value for parameter 'title': {err}") from None


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking file work in a worker thread. Abandoned (not awaited) when cancelled: a daemon that
    stops never waits for a slow disk."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


async def _memory_after_free(backend: Backend, before: int | None) -> int | None:
    """GPU memory after a free call. Backends free asynchronously (ComfyUI unloads on its next loop), so
    wait up to two seconds for the figure to drop before recording it."""
    if before is None:
        return None
    after = before
    with trio.move_on_after(2.0):
        while True:
            await gpu.refresh(max_age=0)
            after = backend.gpu_memory() or 0
            if after < before:
                break
            await trio.sleep(0.1)
    return after


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**20:.0f} MiB"
