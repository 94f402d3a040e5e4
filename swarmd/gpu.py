"""GPUs: the machine's inventory over NVML, pin resolution, automatic placement, per-process memory.

Theory of operation
-------------------
* One `Inventory` for the daemon, created on first use (`inventory()`). `NvmlInventory` initialises NVML
  once; without a driver it says so once in the log and reports an empty, unavailable inventory -- no
  call ever raises, and nothing is logged per request. Tests replace it at this boundary with
  `set_inventory(StaticInventory(...))`.
* `resolve(gpu_id)` turns what a person wrote -- `0`, `0,1`, a GPU UUID or unique prefix, a MIG UUID --
  into the devices of this machine, or raises `PinError` naming what is wrong and what exists. The child
  gets `CUDA_VISIBLE_DEVICES` written with full UUIDs and `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so the GPU a
  person names is the GPU the process uses, whatever order CUDA would pick (SwarmUI #956). Without NVML
  the pin cannot be checked: it is passed on as written, still with PCI bus order.
* `auto` is placed at each start: among the GPUs with the fewest swarmd backends pinned to them, the one
  with the most free memory.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    """A fixed inventory: the machine without a driver (empty), or a fake one in tests."""

    gpu_list: list[GPU] = field(default_factory=list)
    process_list: list[ProcessUse] = field(default_factory=list)
    available: bool = True

    def gpus(self) -> list[GPU]:
        return list(self.gpu_list)

    def processes(self) -> list[ProcessUse]:
        return list(self.process_list)


class NvmlInventory:
    """The real inventory over NVML. Every call is guarded: a failing query gives what could be read."""

    def __init__(self) -> None:
        self.available = False
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as err:  # NVMLError_LibraryNotFound / DriverNotLoaded / ImportError
            log.info("no NVIDIA driver found (%s): running without GPU inventory; gpu_id pins are passed "
                     "on unchecked", _nvml_text(err))
            return
        self._nvml = pynvml
        self.available = True
        log.info("NVML: %d GPUs (driver %s)", len(self.gpus()), self._call("nvmlSystemGetDriverVersion",
                                                                        default="?"))

    def _call(self, name: str, *args: Any, default: Any = None) -> Any:
        try:
            return getattr(self._nvml, name)(*args)
        except Exception:
            return default

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
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_text(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


_inventory: Inventory | None = None


def inventory() -> Inventory:
    """The daemon's inventory, created (NVML initialised) on first use."""
    global _inventory
    if _inventory is None:
        _inventory = NvmlInventory()
    return _inventory


def set_inventory(value: Inventory | None) -> None:
    """Replace the inventory (tests: a fake one at this boundary; None: NVML again on next use)."""
    global _inventory
    _inventory = value


# -- pins ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
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


def _split(gpu_id: str) -> list[str]:
    return [part.strip() for part in str(gpu_id).split(",")]


def check_syntax(gpu_id: str) -> str:
    """The shape check that needs no inventory. Returns the normalized text; raises PinError."""
    text = str(gpu_id).strip()
    if text in ("", "auto"):
        return text
    parts = _split(text)
    for part in parts:
        if not part:
            raise PinError(f"expected a GPU index, a list (0,1), a GPU/MIG UUID or auto, got {gpu_id!r}")
        if not (part.isdigit() or part.startswith(("GPU-", "MIG-"))):
            raise PinError(f"{part!r} is not a GPU index or UUID (expected e.g. 0, 0,1, GPU-8a2f..., "
                           "MIG-..., or auto)")
    duplicate = next((p for p in parts if parts.count(p) > 1), None)
    if duplicate is not None:
        raise PinError(f"GPU {duplicate!r} is listed twice")
    return ",".join(parts)


def resolve(gpu_id: str, inv: Inventory | None = None) -> Pin:
    """Resolve an explicit pin (not `auto`) against the machine. Raises PinError."""
    text = check_syntax(gpu_id)
    if text == "":
        return Pin()
    if text == "auto":
        raise PinError("auto is placed at start, not resolved")
    inv = inv or inventory()
    if not inv.available:
        return Pin(visible=text)
    gpus = inv.gpus()
    migs = [m for g in gpus for m in g.mig_devices]
    chosen_gpus: list[GPU] = []
    chosen_migs: list[MigDevice] = []
    seen: set[str] = set()
    for part in _split(text):
        if part.isdigit():
            match = [g for g in gpus if g.index == int(part)]
            if not match:
                raise PinError(f"no GPU {part!r} (this machine has {_indices(gpus)})")
            device: GPU | MigDevice = match[0]
        elif part.startswith("GPU-"):
            match = [g for g in gpus if g.uuid.startswith(part)]
            if not match:
                raise PinError(f"no GPU with UUID {part!r} on this machine (it has {_uuids(gpus)})")
            if len(match) > 1:
                raise PinError(f"UUID prefix {part!r} is not unique: it matches "
                               f"{', '.join(g.uuid for g in match)}")
            device = match[0]
        else:
            mig_match = [m for m in migs if m.uuid.startswith(part)]
            if not mig_match:
                raise PinError(f"no MIG device {part!r} on this machine"
                               + (f" (it has {', '.join(m.uuid for m in migs)})" if migs else
                                  " (no GPU is in MIG mode)"))
            if len(mig_match) > 1:
                raise PinError(f"MIG UUID prefix {part!r} is not unique")
            device = mig_match[0]
        if device.uuid in seen:
            raise PinError(f"{part!r} names a GPU already listed")
        seen.add(device.uuid)
        if isinstance(device, GPU):
            chosen_gpus.append(device)
        else:
            chosen_migs.append(device)
    visible = ",".join([g.uuid for g in chosen_gpus] + [m.uuid for m in chosen_migs])
    return Pin(visible=visible, gpus=tuple(chosen_gpus), migs=tuple(chosen_migs), checked=True)


def validate(gpu_id: str) -> str:
    """For the settings schema: syntax always, existence when NVML is present. Raises PinError."""
    text = check_syntax(gpu_id)
    if text not in ("", "auto"):
        resolve(text)
    return text


def place_auto(pinned_counts: dict[str, int], inv: Inventory | None = None) -> Pin:
    """`auto`: among the GPUs with the fewest swarmd backends pinned, the one with the most free memory.

    `pinned_counts` maps GPU UUID -> backends pinned to it now. Raises PinError without any GPU.
    """
    inv = inv or inventory()
    gpus = [g for g in inv.gpus() if not g.mig_mode]
    if not inv.available or not gpus:
        raise PinError("gpu_id is auto, but this machine has no GPU that NVML can see")
    fewest = min(pinned_counts.get(g.uuid, 0) for g in gpus)
    candidates = [g for g in gpus if pinned_counts.get(g.uuid, 0) == fewest]
    best = max(candidates, key=lambda g: (g.memory_free, -g.index))
    return Pin(visible=best.uuid, gpus=(best,), checked=True)


def memory_by_pid(inv: Inventory | None = None) -> dict[int, int]:
    """GPU memory held by each process (bytes, summed over devices). Empty without NVML."""
    inv = inv or inventory()
    if not inv.available:
        return {}
    totals: dict[int, int] = {}
    for use in inv.processes():
        totals[use.pid] = totals.get(use.pid, 0) + use.used_memory
    return totals


_GROUP_CACHE_SECONDS = 0.5
_group_cache: tuple[float, dict[int, int]] | None = None


def memory_by_group(inv: Inventory | None = None) -> dict[int, int]:
    """GPU memory held by each process group (bytes), keyed by pgid: a backend's main process and every
    child it started. Only the few processes NVML lists are looked up; cached for half a second so a
    ListBackends of many backends costs one NVML query. Empty without NVML."""
    global _group_cache
    now = time.monotonic()
    if _group_cache is not None and now - _group_cache[0] < _GROUP_CACHE_SECONDS and inv is None:
        return _group_cache[1]
    totals: dict[int, int] = {}
    for pid, used in memory_by_pid(inv).items():
        try:
            pgid = os.getpgid(pid)
        except OSError:
            continue  # gone, or in another pid namespace
        totals[pgid] = totals.get(pgid, 0) + used
    if inv is None:
        _group_cache = (now, totals)
    return totals


def forget_cache() -> None:
    global _group_cache
    _group_cache = None


async def resource_info() -> dict[str, dict[str, Any]]:
    """GetServerResourceInfo's "gpus" section: {"0": {...}, ...}; empty without NVML."""
    import trio

    gpus = await trio.to_thread.run_sync(lambda: inventory().gpus())
    return {str(g.index): g.to_api() for g in gpus}


def _indices(gpus: list[GPU]) -> str:
    return ", ".join(str(g.index) for g in gpus) if gpus else "no GPUs"


def _uuids(gpus: list[GPU]) -> str:
    return ", ".join(g.uuid for g in gpus) if gpus else "no GPUs"
