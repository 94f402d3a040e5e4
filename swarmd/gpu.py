"""GPUs: the machine's inventory over NVML, pin resolution, automatic placement, per-process memory.

Theory of operation
-------------------
* Nothing here that can block runs on the event loop. NVML calls block (a busy or wedged driver can take
  seconds), so they happen in two places only: `load_inventory()`, which the daemon runs once at start in a
  worker thread, and `refresh()`, which reads the changing figures in a worker thread.
* `load_inventory()` initialises NVML once and takes the **identity snapshot**: each GPU's index, UUID,
  name, PCI bus id, total memory, MIG mode and MIG devices (with the memory figures of that moment). GPUs
  do not come and go while the daemon runs; a new one needs a restart of the daemon. `inventory()` gives
  the inventory, loading it synchronously on first use if nobody did (`swarmd check`, tests). Without a
  driver the inventory is unavailable and empty, says so once in the log, and no call ever raises. Tests
  replace it at this boundary with `set_inventory(StaticInventory(...))`.
* `resolve`, `validate`, `place_auto` and `place` use the snapshot only: no NVML call, so validating a
  gpu_id (each check, reload, EditBackend) and placing a start cost microseconds.
* `resolve(gpu_id)` turns what a person wrote -- `0`, `0,1`, a GPU UUID or unique prefix, a MIG UUID --
  into the devices of this machine, or raises `PinError` naming what is wrong and what exists. The child
  gets `CUDA_VISIBLE_DEVICES` written with full UUIDs and `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so the GPU a
  person names is the GPU the process uses, whatever order CUDA would pick (SwarmUI #956). Without NVML
  the pin cannot be checked: it is passed on as written, still with PCI bus order.
* `auto` is placed at each start (`place`): among the GPUs with the fewest swarmd backends pinned to them,
  the one with the most free memory (as last refreshed, else as in the snapshot).
* The changing figures -- memory used/free, utilization, temperature, GPU memory per process -- are read by
  `refresh(max_age)` in a worker thread, at most every `max_age` seconds; concurrent callers share one
  read. `group_memory()` and `gpus()` give the last figures read and never call NVML.
* GPU health: `watch_health()` (started by the Fleet) waits, in a worker thread, for NVML's critical Xid
  events and asks every GPU, between two waits, whether NVML still reaches it. A GPU found failed (a Xid
  that is not an application's own error, or NVML answering "GPU is lost") is logged, recorded in
  `failures()` until the daemon restarts, shown in GetServerResourceInfo, and handed to the Fleet, which
  tells the backends running on it; `auto` never places a start on it and an explicit pin to it fails the
  start. Without NVML there is nothing to watch: it returns at once. Tests inject events at the inventory
  boundary (`StaticInventory.inject`) or at NVML's (a fake `pynvml` module).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from swarmd.settings import describe

log = logging.getLogger("swarmd.gpu")


class PinError(ValueError):
    """A gpu_id that names no GPU of this machine, names one twice, or is not a pin at all."""


@dataclass(frozen=True)
class MigDevice:
    uuid: str
    index: int
    parent_index: int
    memory_total: int = 0
    memory_used: int = 0


@dataclass(frozen=True)
class GPU:
    index: int
    uuid: str
    name: str = ""
    pci_bus_id: str = ""
    memory_total: int = 0
    memory_used: int = 0
    memory_free: int = 0
    utilization_gpu: int = 0
    utilization_memory: int = 0
    temperature: int = 0
    mig_mode: bool = False
    mig_devices: tuple[MigDevice, ...] = ()

    def to_api(self) -> dict[str, Any]:
        """SwarmUI's GetServerResourceInfo entry (bytes), plus the ids a person pins by."""
        return {
            "id": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "pci_bus_id": self.pci_bus_id,
            "temperature": self.temperature,
            "utilization_gpu": self.utilization_gpu,
            "utilization_memory": self.utilization_memory,
            "total_memory": self.memory_total,
            "free_memory": self.memory_free,
            "used_memory": self.memory_used,
            "mig_mode": self.mig_mode,
            "mig_devices": [{"uuid": m.uuid, "index": m.index, "total_memory": m.memory_total,
                             "used_memory": m.memory_used} for m in self.mig_devices],
        }


@dataclass(frozen=True)
class ProcessUse:
    """GPU memory a process holds on one device."""

    pid: int
    uuid: str
    used_memory: int


class Inventory(Protocol):
    available: bool

    def gpus(self) -> list[GPU]: ...

    def processes(self) -> list[ProcessUse]: ...


@dataclass
class StaticInventory:
    """A fixed inventory: the machine without a driver (empty), or a fake one in tests, whose health
    events are those a test injects (`inject`)."""

    gpu_list: list[GPU] = field(default_factory=list)
    process_list: list[ProcessUse] = field(default_factory=list)
    available: bool = True
    health_events: queue.Queue[HealthEvent] = field(default_factory=queue.Queue, compare=False, repr=False)

    def gpus(self) -> list[GPU]:
        return list(self.gpu_list)

    def processes(self) -> list[ProcessUse]:
        return list(self.process_list)

    def inject(self, event: HealthEvent) -> None:
        """What NVML would report (a Xid, a lost GPU), for the next `wait_health` (tests)."""
        self.health_events.put(event)

    def wait_health(self, timeout: float) -> list[HealthEvent]:
        """Blocking: the injected events, waiting up to `timeout` seconds for the first."""
        try:
            seen = [self.health_events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                seen.append(self.health_events.get_nowait())
            except queue.Empty:
                return seen


#: The library pynvml loads (Linux).
NVML_LIBRARY = "libnvidia-ml.so.1"


def _nvml_module() -> Any:
    """The `pynvml` module -- imported only where the NVIDIA driver's library loads, or where a stand-in is
    in place already (a test's fake). The binding is a big module (1.6 MB of the daemon's memory, for
    good), which a host without the driver has no use for. Raises OSError (no library), ImportError."""
    if "pynvml" not in sys.modules:
        ctypes.CDLL(NVML_LIBRARY)  # what pynvml's nvmlInit loads first (dlopen: loaded once, either way)
    import pynvml

    return pynvml


class NvmlInventory:
    """The real inventory over NVML. Every call is guarded: a failing query gives what could be read.

    Its methods block: call them in a worker thread (`load_inventory`, `refresh`), never on the event loop.
    """

    def __init__(self) -> None:
        self.available = False
        self._nvml: Any = None
        self._watch: tuple[Any, list[tuple[Any, str, Any]]] | None = None  # (event set, devices) once set up
        try:
            pynvml = _nvml_module()
            pynvml.nvmlInit()
        except Exception as err:  # no library (OSError) / NVMLError_DriverNotLoaded / ImportError
            log.info("no NVIDIA driver found (%s): running without GPU inventory; gpu_id pins are passed "
                     "on unchecked", _nvml_text(err))
            return
        self._nvml = pynvml
        self.available = True

    def _call(self, name: str, *args: Any, default: Any = None) -> Any:
        try:
            return getattr(self._nvml, name)(*args)
        except Exception:
            return default

    def driver_version(self) -> str:
        return _text(self._call("nvmlSystemGetDriverVersion", default="?")) if self.available else ""

    def gpus(self) -> list[GPU]:
        if not self.available:
            return []
        nvml = self._nvml
        found = []
        for index in range(self._call("nvmlDeviceGetCount", default=0)):
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            memory = self._call("nvmlDeviceGetMemoryInfo", handle)
            rates = self._call("nvmlDeviceGetUtilizationRates", handle)
            pci = self._call("nvmlDeviceGetPciInfo", handle)
            mig_current = (self._call("nvmlDeviceGetMigMode", handle, default=(0, 0)) or (0, 0))[0]
            migs: list[MigDevice] = []
            if mig_current:
                for mig_index in range(self._call("nvmlDeviceGetMaxMigDeviceCount", handle, default=0)):
                    mig = self._call("nvmlDeviceGetMigDeviceHandleByIndex", handle, mig_index)
                    if mig is None:
                        continue
                    mig_memory = self._call("nvmlDeviceGetMemoryInfo", mig)
                    migs.append(MigDevice(
                        uuid=_text(self._call("nvmlDeviceGetUUID", mig, default="")), index=mig_index,
                        parent_index=index, memory_total=getattr(mig_memory, "total", 0),
                        memory_used=getattr(mig_memory, "used", 0)))
            found.append(GPU(
                index=index,
                uuid=_text(self._call("nvmlDeviceGetUUID", handle, default="")),
                name=_text(self._call("nvmlDeviceGetName", handle, default="")),
                pci_bus_id=_text(getattr(pci, "busId", "")),
                memory_total=getattr(memory, "total", 0), memory_used=getattr(memory, "used", 0),
                memory_free=getattr(memory, "free", 0),
                utilization_gpu=getattr(rates, "gpu", 0), utilization_memory=getattr(rates, "memory", 0),
                temperature=self._call("nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU,
                                       default=0),
                mig_mode=bool(mig_current), mig_devices=tuple(migs)))
        return found

    def wait_health(self, timeout: float) -> list[HealthEvent]:
        """Blocking (a worker thread only): wait up to `timeout` seconds for a critical Xid event of any
        GPU, then ask every GPU whether NVML still reaches it. Returns what was seen ([] when all is well).
        Where events cannot be registered (an old driver, no permission), it only polls, once per
        `timeout`."""
        if not self.available:
            time.sleep(timeout)
            return []
        nvml = self._nvml
        if self._watch is None:
            self._watch = self._register_events()
        event_set, devices = self._watch
        seen: list[HealthEvent] = []
        if event_set is None:
            time.sleep(timeout)
        else:
            try:
                wait = getattr(nvml, "nvmlEventSetWait_v2", None) or nvml.nvmlEventSetWait
                data = wait(event_set, max(int(timeout * 1000), 1))
            except Exception as err:
                if getattr(err, "value", None) != getattr(nvml, "NVML_ERROR_TIMEOUT", 10):
                    # Not a quiet timeout: waiting again at once could spin; poll from now on.
                    log.warning("NVML: waiting for GPU events failed (%s): GPUs are polled only, every %g s",
                                _nvml_text(err), timeout)
                    self._watch = (None, devices)
                    time.sleep(timeout)
            else:
                by_key = {key: uuid for key, uuid, _ in devices}
                uuid = by_key.get(_handle_key(data.device))
                if uuid is not None and data.eventType & _xid_event_type(nvml):
                    seen.append(HealthEvent(uuid, xid=int(data.eventData)))
        lost_codes = (getattr(nvml, "NVML_ERROR_GPU_IS_LOST", 15), getattr(nvml, "NVML_ERROR_RESET_REQUIRED", 16))
        for _, uuid, handle in devices:
            try:
                nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as err:
                if getattr(err, "value", None) in lost_codes:  # fallen off the bus, or needs a reset
                    seen.append(HealthEvent(uuid, lost=_nvml_text(err)))
        return seen

    def _register_events(self) -> tuple[Any, list[tuple[Any, str, Any]]]:
        """Set up the watch: every GPU (key of its handle, UUID, handle), and an event set with each GPU
        that reports Xid events registered (None when none could be)."""
        nvml = self._nvml
        devices = []
        for index in range(self._call("nvmlDeviceGetCount", default=0)):
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            if handle is not None:
                devices.append((_handle_key(handle), _text(self._call("nvmlDeviceGetUUID", handle, default="")),
                                handle))
        try:
            event_set = nvml.nvmlEventSetCreate()
        except Exception as err:
            log.warning("NVML events are not available (%s): GPUs are polled only", _nvml_text(err))
            return None, devices
        registered = 0
        for _, uuid, handle in devices:
            supported = self._call("nvmlDeviceGetSupportedEventTypes", handle, default=0) or 0
            try:
                if not supported & _xid_event_type(nvml):
                    raise RuntimeError("it does not report Xid events")
                nvml.nvmlDeviceRegisterEvents(handle, _xid_event_type(nvml), event_set)
                registered += 1
            except Exception as err:
                log.warning("NVML: GPU %s: no Xid events (%s): only polled", uuid, _nvml_text(err))
        if not registered:
            self._call("nvmlEventSetFree", event_set)
            return None, devices
        return event_set, devices

    def processes(self) -> list[ProcessUse]:
        if not self.available:
            return []
        uses = []
        for index in range(self._call("nvmlDeviceGetCount", default=0)):
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            uuid = _text(self._call("nvmlDeviceGetUUID", handle, default=""))
            for proc in self._call("nvmlDeviceGetComputeProcesses", handle, default=[]) or []:
                used = getattr(proc, "usedGpuMemory", None) or 0
                uses.append(ProcessUse(pid=proc.pid, uuid=uuid, used_memory=int(used)))
        return uses


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _nvml_text(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _xid_event_type(nvml: Any) -> int:
    """NVML's event type of Xid errors, from the module in use."""
    return int(getattr(nvml, "nvmlEventTypeXidCriticalError", 0x8))


def _handle_key(handle: Any) -> Any:
    """A device handle as a dict key: the address it points to (an event's handle is a new ctypes object
    for the same device), or the handle itself where it is not a pointer (a fake module's)."""
    try:
        import ctypes

        return ctypes.cast(handle, ctypes.c_void_p).value
    except Exception:
        return handle


@dataclass(frozen=True)
class _Figures:
    """One refresh: when it was read (time.monotonic), each GPU as read then (by UUID), memory by pgid, and
    memory by pgid and GPU UUID (the metrics show a backend's memory on each of its GPUs)."""

    taken: float
    gpus: dict[str, GPU]
    groups: dict[int, int]
    group_gpus: dict[int, dict[str, int]] = field(default_factory=dict)


_lock = threading.Lock()  # loading: the start-up thread and a first synchronous use may race
_inventory: Inventory | None = None
_snapshot: tuple[GPU, ...] | None = None  # the identity snapshot; None: not loaded
_figures: _Figures | None = None  # the last refresh
_stale = False  # forget_cache(): the next refresh reads, whatever its max_age
_flight: Any = None  # the trio.Event of the refresh in progress (single flight)


def load_inventory() -> None:
    """Initialise NVML (once) and take the identity snapshot. Blocking: the daemon runs it once at start in
    a worker thread. Does nothing when already loaded."""
    _load()


def _load() -> Inventory:
    global _inventory, _snapshot
    with _lock:
        inv = _inventory
        if inv is not None and _snapshot is not None:
            return inv
        if inv is None:
            inv = _inventory = NvmlInventory()
        gpus = tuple(inv.gpus()) if inv.available else ()
        _snapshot = gpus
    if isinstance(inv, NvmlInventory) and inv.available:
        log.info("NVML: %d GPUs (driver %s)%s", len(gpus), inv.driver_version(),
                 "".join(f"; {g.index}: {g.name} {g.uuid}" for g in gpus))
    return inv


def inventory() -> Inventory:
    """The daemon's inventory, loaded (NVML initialised, snapshot taken) synchronously on first use if
    `load_inventory` has not run."""
    inv = _inventory
    return inv if inv is not None and _snapshot is not None else _load()


def available() -> bool:
    """Whether NVML sees this machine (loading the inventory on first use, as `inventory()`)."""
    return inventory().available


def set_inventory(value: Inventory | None) -> None:
    """Replace the inventory (tests: a fake one at this boundary; None: NVML again on next use). The
    snapshot is taken from it on first use; the refreshed figures are forgotten."""
    global _inventory, _snapshot, _figures, _stale
    with _lock:
        _inventory = value
        _snapshot = None
        _figures = None
        _stale = False
        _failed.clear()  # a new machine: nothing known to have failed


def _identity() -> tuple[GPU, ...]:
    if _snapshot is None:
        _load()
    return _snapshot or ()


def gpus() -> list[GPU]:
    """The machine's GPUs: identity from the snapshot, memory/utilization/temperature from the last refresh
    (the snapshot's own figures before any). Never calls NVML (once loaded)."""
    identity = _identity()
    figures = _figures
    if figures is None:
        return list(identity)
    return [_merge(g, figures.gpus.get(g.uuid)) for g in identity]


def _merge(known: GPU, read: GPU | None) -> GPU:
    """The GPU of the snapshot with the changing figures of a refresh (identity never changes)."""
    if read is None:
        return known
    migs = {m.uuid: m for m in read.mig_devices}
    return dataclasses.replace(
        known, memory_used=read.memory_used, memory_free=read.memory_free,
        utilization_gpu=read.utilization_gpu, utilization_memory=read.utilization_memory,
        temperature=read.temperature,
        mig_devices=tuple(dataclasses.replace(m, memory_used=migs[m.uuid].memory_used) if m.uuid in migs
                          else m for m in known.mig_devices))


# -- pins ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pin:
    """Where a backend runs. `visible` is the CUDA_VISIBLE_DEVICES value ("" when not pinned)."""

    visible: str = ""
    gpus: tuple[GPU, ...] = ()
    migs: tuple[MigDevice, ...] = ()
    checked: bool = False  # resolved against a real inventory

    def env(self, rocr: bool = False) -> dict[str, str]:
        if not self.visible:
            return {}
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": self.visible}
        if rocr:
            env["ROCR_VISIBLE_DEVICES"] = self.visible
        return env

    def describe(self) -> list[dict[str, Any]]:
        """The resolved GPUs, as ListBackends shows them."""
        if not self.checked:
            return [{"id": part, "uuid": None, "name": None} for part in self.visible.split(",") if part]
        shown: list[dict[str, Any]] = [{"id": g.index, "uuid": g.uuid, "name": g.name} for g in self.gpus]
        shown += [{"id": f"{m.parent_index}:{m.index}", "uuid": m.uuid, "name": "MIG"} for m in self.migs]
        return shown


#: The pin of every start that names no GPU (frozen: one for all).
UNPINNED = Pin()


def _split(gpu_id: str) -> list[str]:
    return [part.strip() for part in str(gpu_id).split(",")]


_INDEX = re.compile(r"[0-9]{1,4}")
_UUID = re.compile(r"(GPU|MIG)-[A-Za-z0-9/_.:-]+")


def check_syntax(gpu_id: str) -> str:
    """The shape check that needs no inventory. Returns the normalized text; raises PinError."""
    text = str(gpu_id).strip()
    if text in ("", "auto"):
        return text
    parts = _split(text)
    seen: set[str] = set()
    for part in parts:
        if not part:
            raise PinError(f"expected a GPU index, a list (0,1), a GPU/MIG UUID or auto, "
                           f"got {describe(gpu_id)}")
        if not (_INDEX.fullmatch(part) or _UUID.fullmatch(part)):
            raise PinError(f"{describe(part)} is not a GPU index or UUID (expected e.g. 0, 0,1, GPU-8a2f..., "
                           "MIG-..., or auto)")
        if part in seen:
            raise PinError(f"GPU {describe(part)} is listed twice")
        seen.add(part)
    return ",".join(parts)


def resolve(gpu_id: str) -> Pin:
    """Resolve an explicit pin (not `auto`) against the snapshot (no NVML call). Raises PinError."""
    text = check_syntax(gpu_id)
    if text == "":
        return UNPINNED
    if text == "auto":
        raise PinError("auto is placed at start, not resolved")
    if not inventory().available:
        return Pin(visible=text)
    known = _identity()
    migs = [m for g in known for m in g.mig_devices]
    chosen_gpus: list[GPU] = []
    chosen_migs: list[MigDevice] = []
    seen: set[str] = set()
    for part in _split(text):
        if part.isdigit():
            match = [g for g in known if g.index == int(part)]
            if not match:
                raise PinError(f"no GPU {describe(part)} (this machine has {_indices(known)})")
            device: GPU | MigDevice = match[0]
        elif part.startswith("GPU-"):
            match = [g for g in known if g.uuid.startswith(part)]
            if not match:
                raise PinError(f"no GPU with UUID {describe(part)} on this machine (it has {_uuids(known)})")
            if len(match) > 1:
                raise PinError(f"UUID prefix {describe(part)} is not unique: it matches "
                               f"{', '.join(g.uuid for g in match)}")
            device = match[0]
        else:
            mig_match = [m for m in migs if m.uuid.startswith(part)]
            if not mig_match:
                raise PinError(f"no MIG device {describe(part)} on this machine"
                               + (f" (it has {', '.join(m.uuid for m in migs)})" if migs else
                                  " (no GPU is in MIG mode)"))
            if len(mig_match) > 1:
                raise PinError(f"MIG UUID prefix {describe(part)} is not unique")
            device = mig_match[0]
        if device.uuid in seen:
            raise PinError(f"{describe(part)} names a GPU already listed")
        seen.add(device.uuid)
        if isinstance(device, GPU):
            chosen_gpus.append(device)
        else:
            chosen_migs.append(device)
    visible = ",".join([g.uuid for g in chosen_gpus] + [m.uuid for m in chosen_migs])
    return Pin(visible=visible, gpus=tuple(chosen_gpus), migs=tuple(chosen_migs), checked=True)


def validate(gpu_id: str) -> str:
    """For the settings schema: syntax always, existence when NVML is present (against the snapshot).
    Returns the normalized text; raises PinError."""
    text = check_syntax(gpu_id)
    if text not in ("", "auto"):
        resolve(text)
    return text


def place_auto(pinned_counts: Mapping[str, int]) -> Pin:
    """`auto`: among the GPUs with the fewest swarmd backends pinned, the one with the most free memory
    (as last refreshed, else as in the snapshot). No NVML call.

    `pinned_counts` maps GPU UUID -> backends pinned to it now. Raises PinError without any GPU.
    """
    whole = [g for g in gpus() if not g.mig_mode] if inventory().available else []
    if not whole:
        raise PinError("gpu_id is auto, but this machine has no GPU that NVML can see")
    healthy = [g for g in whole if g.uuid not in _failed]
    if not healthy:
        raise PinError("gpu_id is auto, but every GPU has failed: "
                       + "; ".join(f"GPU {_failed[g.uuid].label()}: {_failed[g.uuid].reason}" for g in whole))
    whole = healthy
    fewest = min(pinned_counts.get(g.uuid, 0) for g in whole)
    candidates = [g for g in whole if pinned_counts.get(g.uuid, 0) == fewest]
    best = max(candidates, key=lambda g: (g.memory_free, -g.index))
    return Pin(visible=best.uuid, gpus=(best,), checked=True)


def place(gpu_id: str, pinned_counts: Mapping[str, int]) -> Pin:
    """The pin for one start: an explicit pin resolved, `auto` placed among the GPUs with the fewest
    backends (`pinned_counts`: GPU UUID -> other backends with a live process pinned to it). No NVML call.
    Raises PinError."""
    if str(gpu_id).strip() == "auto":
        return place_auto(pinned_counts)
    pin = resolve(gpu_id)
    for uuid in pinned_uuids(pin):
        failure = _failed.get(uuid)
        if failure is not None:
            raise PinError(f"GPU {failure.label()} failed: {failure.reason}; not starting on it (pin another "
                           "GPU, or restart swarmd once it is repaired)")
    return pin


def pinned_uuids(pin: Pin) -> set[str]:
    """The UUIDs of the whole GPUs a pin runs on: its GPUs, and the GPU of each of its MIG devices."""
    parents = {g.index: g.uuid for g in _identity()} if pin.migs else {}
    return {g.uuid for g in pin.gpus} | {parents[m.parent_index] for m in pin.migs if m.parent_index in parents}


# -- the changing figures: read in a worker thread ----------------------------------------------------


def _read_figures() -> _Figures:
    """Blocking: read memory, utilization, temperature and per-process memory (a worker thread only)."""
    inv = inventory()
    taken = time.monotonic()
    if not inv.available:
        return _Figures(taken, {}, {})
    read = {g.uuid: g for g in inv.gpus()}
    groups: dict[int, int] = {}
    group_gpus: dict[int, dict[str, int]] = {}
    for use in inv.processes():
        try:
            pgid = os.getpgid(use.pid)
        except OSError:
            continue  # gone, or in another pid namespace
        groups[pgid] = groups.get(pgid, 0) + use.used_memory
        on_gpu = group_gpus.setdefault(pgid, {})
        on_gpu[use.uuid] = on_gpu.get(use.uuid, 0) + use.used_memory
    return _Figures(taken, read, groups, group_gpus)


async def refresh(max_age: float = 0.5) -> None:
    """Read the changing figures again in a worker thread, unless the last read is younger than `max_age`
    seconds. Concurrent callers share one read (single flight). Loads the inventory (in the thread) if
    nobody did. Never raises for NVML's sake; cancellation abandons the thread."""
    global _figures, _flight, _stale
    import trio

    figures = _figures
    if figures is not None and not _stale and time.monotonic() - figures.taken < max_age:
        return
    inv = _inventory
    if _snapshot is not None and inv is not None and not inv.available:
        return  # no driver: nothing changes, nothing to read
    if _flight is not None:
        await _flight.wait()
        return
    done = _flight = trio.Event()
    try:
        if _snapshot is None:
            await trio.to_thread.run_sync(load_inventory, abandon_on_cancel=True)
        stale_before, reading = _stale, _inventory
        read = await trio.to_thread.run_sync(_read_figures, abandon_on_cancel=True)
        if _inventory is reading:  # not replaced meanwhile (set_inventory)
            _figures = read
            if stale_before:
                _stale = False
    finally:
        _flight = None
        done.set()


def group_memory() -> dict[int, int] | None:
    """GPU memory held by each process group (bytes) at the last refresh, keyed by pgid: a backend's main
    process and every child it started. None when NVML is unavailable or the inventory is not loaded yet;
    {} before the first refresh. Never calls NVML."""
    inv = _inventory
    if _snapshot is None or inv is None or not inv.available:
        return None
    figures = _figures
    return dict(figures.groups) if figures is not None else {}


def memory_of(pgid: int) -> int | None:
    """`group_memory().get(pgid, 0)` without copying the table (ListBackends asks for every backend): None
    when NVML is unavailable or the inventory is not loaded yet. Never calls NVML."""
    inv = _inventory
    if _snapshot is None or inv is None or not inv.available:
        return None
    figures = _figures
    return figures.groups.get(pgid, 0) if figures is not None else 0


_figures_key: tuple[object, ...] = (None, None, None)


def figures_key() -> tuple[object, ...]:
    """What `memory_of` answers from, as one object: the same one (compare with `is`) for as long as its
    answers stay the same -- a refresh or a new inventory makes a new one."""
    global _figures_key
    key = _figures_key
    if key[0] is not _inventory or key[1] is not _snapshot or key[2] is not _figures:
        key = _figures_key = (_inventory, _snapshot, _figures)
    return key


def group_memory_by_gpu() -> dict[int, dict[str, int]] | None:
    """`group_memory` split by device: pgid -> {GPU (or MIG) UUID: bytes}, at the last refresh. None when
    NVML is unavailable or the inventory is not loaded yet; {} before the first refresh. Never calls NVML."""
    inv = _inventory
    if _snapshot is None or inv is None or not inv.available:
        return None
    figures = _figures
    return {pgid: dict(uses) for pgid, uses in figures.group_gpus.items()} if figures is not None else {}


def forget_cache() -> None:
    """Make the next `refresh` read, whatever its max_age (the last figures stay readable until then)."""
    global _stale
    _stale = True


async def resource_info() -> dict[str, dict[str, Any]]:
    """GetServerResourceInfo's "gpus" section: {"0": {...}, ...}, refreshed through `refresh`; empty
    without NVML."""
    await refresh()
    return {str(g.index): {**g.to_api(), "failed": _failed[g.uuid].to_api() if g.uuid in _failed else None}
            for g in gpus()}


def _indices(known: Sequence[GPU]) -> str:
    return ", ".join(str(g.index) for g in known) if known else "no GPUs"


def _uuids(known: Sequence[GPU]) -> str:
    return ", ".join(g.uuid for g in known) if known else "no GPUs"


# -- GPU health: critical Xid events and GPUs NVML no longer reaches ------------------------------------

#: Xid errors that an application causes (a bad kernel, a page fault in its memory, a channel torn down):
#: the GPU itself is fine and stays in use. The same list NVIDIA's Kubernetes device plugin skips.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})

#: What the Xids of failing GPUs mean (NVIDIA's Xid catalog); another critical Xid is named by its number.
XID_MEANINGS = {
    48: "double-bit ECC error", 63: "ECC page retirement or row remapping", 64: "ECC page retirement or row "
    "remapping failure", 74: "NVLink error", 79: "GPU has fallen off the bus", 92: "high single-bit ECC error "
    "rate", 94: "contained ECC error", 95: "uncontained ECC error", 119: "GSP RPC timeout", 120: "GSP error",
    140: "unrecovered ECC error",
}

#: Seconds of one wait for NVML events; between two waits every GPU is asked whether NVML still reaches it.
WATCH_SECONDS = 5.0


@dataclass(frozen=True)
class HealthEvent:
    """What a watch of the GPUs saw on one GPU: a critical Xid (`xid`), or NVML no longer reaching it
    (`lost`: NVML's error, e.g. "NVMLError_GpuIsLost: GPU is lost")."""

    uuid: str
    xid: int | None = None
    lost: str = ""


@dataclass(frozen=True)
class GpuFailure:
    """A GPU found failed while the daemon runs. It stays failed until swarmd restarts: a GPU that fell
    off the bus or needs a reset does not come back by itself."""

    index: int
    uuid: str
    name: str
    reason: str  # "Xid 79 (GPU has fallen off the bus)"
    time: float  # time.time() when it was seen

    def label(self) -> str:
        """How a person reads it: `1 (NVIDIA H200, GPU-2222...)`."""
        return f"{self.index} ({', '.join(filter(None, (self.name, self.uuid)))})"

    def to_api(self) -> dict[str, Any]:
        return {"reason": self.reason, "time": self.time}


_failed: dict[str, GpuFailure] = {}  # by UUID; written on the event loop only


def failures() -> dict[str, GpuFailure]:
    """The GPUs found failed since the daemon started, by UUID. Never calls NVML."""
    return dict(_failed)


def failure_reason(event: HealthEvent) -> str | None:
    """Why `event` means its GPU failed, as a person reads it; None when it does not (an application's
    own Xid)."""
    if event.lost:
        return f"stopped answering NVML ({event.lost})"
    if event.xid is None or event.xid in APPLICATION_XIDS:
        return None
    meaning = XID_MEANINGS.get(event.xid)
    return f"Xid {event.xid} ({meaning})" if meaning else f"Xid {event.xid}"


def record_failure(event: HealthEvent) -> GpuFailure | None:
    """Take one health event (on the event loop): a new failure is recorded, logged and returned; an
    application's Xid is logged and gives None, as does a GPU already known to have failed."""
    known = next((g for g in _identity() if g.uuid == event.uuid), None)
    reason = failure_reason(event)
    if reason is None:
        log.info("GPU %s: Xid %s, an application's error: the GPU stays in use",
                 known.index if known else event.uuid, event.xid)
        return None
    if event.uuid in _failed:
        return None
    failure = GpuFailure(index=known.index if known else -1, uuid=event.uuid, name=known.name if known else "",
                         reason=reason, time=time.time())
    _failed[event.uuid] = failure
    log.error("GPU %s failed: %s; no backend is started on it until swarmd restarts", failure.label(), reason)
    return failure


async def watch_health(on_failure: Callable[[GpuFailure], None], interval: float = WATCH_SECONDS) -> None:
    """Watch the GPUs until cancelled, handing each GPU found failed to `on_failure` (on the event loop,
    once per GPU). The waits for NVML's events and the polls run in worker threads (abandoned when
    cancelled), never on the loop. Returns at once without NVML, and when the inventory is replaced
    (`set_inventory`). Raises nothing of NVML's: a failing wait is logged and retried an interval later."""
    import trio

    inv = await trio.to_thread.run_sync(inventory, abandon_on_cancel=True)
    wait = getattr(inv, "wait_health", None)
    if not inv.available or wait is None:
        return
    while _inventory is inv:
        try:
            events = await trio.to_thread.run_sync(wait, interval, abandon_on_cancel=True)
        except Exception:
            log.exception("watching the GPUs failed; trying again in %g s", interval)
            await trio.sleep(interval)
            continue
        if _inventory is not inv:
            return
        for event in events:
            failure = record_failure(event)
            if failure is not None:
                on_failure(failure)
