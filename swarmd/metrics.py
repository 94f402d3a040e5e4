"""Prometheus metrics of the daemon, its backends and its GPUs, read at scrape time.

Theory of operation
-------------------
* Nothing is kept for the metrics' sake but a few plain counters where things happen (`supervise/stats.py`:
  a backend's ready time and start-to-ready histogram, free-memory results; the Fleet's reloads, writes and
  refusals; here, the API's requests). Everything else -- statuses, starts and restarts, the last exit,
  output counters, GPU figures -- is read from the objects that own it when a scrape comes. So a deleted
  backend's series vanish with it, and there is no second copy of any state to drift.
* A scrape is taken in two steps. `take_snapshot()` runs on the event loop and copies what each backend
  shows into plain frozen `BackendView`s (attribute reads only: ~6 ms at 1000 backends). The metric
  families are then built and rendered by prometheus_client's own `generate_latest` in a worker thread
  (`Metrics.render`), so a large fleet's exposition never stalls the loop for more than the GIL's switch
  interval. GPU figures come from `gpu.refresh()`, which reads NVML in a worker thread, at most every half
  second, shared with the API's readers.
* Labels are bounded: a backend's `id`, `title` and `type`; a GPU's index, UUID and name; an API route's
  name (unknown routes are counted as "unknown") and a result from a fixed set. Never a message, a pid or
  a path a client chose.
* The process's own CPU, memory and file descriptors are prometheus_client's `ProcessCollector` (the
  `process_*` series), in this daemon's registry (never the library's global one: tests run several
  daemons' worth of apps in one process).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    exposition,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

import swarmd
from swarmd import gpu
from swarmd.supervise.stats import cumulative

if TYPE_CHECKING:
    from swarmd.fleet import Backend, Fleet

#: The exposition's content type: text format 0.0.4, which every Prometheus reads (every name swarmd exports
#: is a classic one, so generate_latest's text is that format); prometheus_client >= 0.22 names it apart
#: from its "latest" (1.0.0, for UTF-8 names), older ones call it the latest.
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
#: The statuses a backend can show (SwarmUI's names); `swarmd_backend_status` has one series per status.
STATUSES = ("running", "loading", "waiting", "idle", "errored", "disabled")
#: What an API request's result label can be besides "ok" and "error" (a handler's error answer).
API_RESULTS = frozenset({"basic_api", "bad_route", "bad_permissions", "internal_error", "not_found"})
BACKEND_LABELS = ("id", "title", "type")
GPU_LABELS = ("gpu", "uuid", "name")


class RequestCounts:
    """Requests counted by two bounded labels (an API route and its result, or a path and its status).
    Plain ints on the trio thread; read by the collector."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, first: str, second: str) -> None:
        key = (first, second)
        self.counts[key] = self.counts.get(key, 0) + 1


@dataclass(frozen=True)
class GpuUse:
    """One GPU a backend's process runs on, with the memory its process group holds there (None: unknown)."""

    index: int | str | None
    uuid: str | None
    name: str | None
    memory_used: int | None


@dataclass(frozen=True)
class BackendView:
    """What one backend shows at one moment: plain values, safe to read from a worker thread."""

    id: int
    title: str
    type: str
    enabled: bool
    status: str
    status_message: str
    pid: int | None
    port: int | None
    starts: int
    restarts: int
    exit_code: int | None
    exit_signal: int | None
    exit_text: str | None
    exit_time: float | None
    exit_cause: str
    ready_since: float | None
    ready_counts: tuple[int, ...]  # start-to-ready observations per bucket of READY_BUCKETS, then above
    ready_sum: float
    lines_in: int
    bytes_in: int
    free_ok: int
    free_failed: int
    gpus: tuple[GpuUse, ...]
    gpu_memory: int | None


@dataclass(frozen=True)
class Snapshot:
    """The whole daemon at one moment (`take_snapshot`): backends, GPUs and the daemon's counters."""

    taken: float
    backends: tuple[BackendView, ...]
    gpus: tuple[gpu.GPU, ...]
    gpu_available: bool
    file_problem: str | None
    reloads: int
    reloads_failed: int
    file_writes: int
    mutations_refused: int
    api_requests: tuple[tuple[tuple[str, str], int], ...] = ()
    http_requests: tuple[tuple[tuple[str, str], int], ...] = ()
    counts: dict[str, int] = field(default_factory=dict)


def take_snapshot(fleet: Fleet, api: RequestCounts | None = None, http: RequestCounts | None = None) -> Snapshot:
    """Copy what the metrics and the status page show, on the event loop (no I/O, no NVML: GPU figures are
    the last ones `gpu.refresh` read). Never raises for a backend's sake."""
    by_gpu = gpu.group_memory_by_gpu()
    backends = tuple(_view(backend, by_gpu) for backend in fleet.backends())
    stats = fleet.stats
    counts: dict[str, int] = {}
    for view in backends:
        counts[view.status] = counts.get(view.status, 0) + 1
    return Snapshot(
        taken=time.time(), backends=backends, gpus=tuple(gpu.gpus()), gpu_available=by_gpu is not None,
        file_problem=fleet.file_problem, reloads=stats.reloads, reloads_failed=stats.reloads_failed,
        file_writes=stats.file_writes, mutations_refused=stats.mutations_refused,
        api_requests=tuple(api.counts.items()) if api is not None else (),
        http_requests=tuple(http.counts.items()) if http is not None else (), counts=counts)


def _view(backend: Backend, by_gpu: dict[int, dict[str, int]] | None) -> BackendView:
    shell = backend.shell
    machine, stats, ring = shell.machine, shell.stats, shell.ring
    last_exit = machine.last_exit
    pid = machine.pid
    on_gpus = by_gpu.get(pid, {}) if by_gpu is not None and pid is not None else None
    uses: list[GpuUse] = []
    if pid is not None:
        pin = shell.pin
        for device in pin.gpus:
            uses.append(GpuUse(device.index, device.uuid, device.name,
                               on_gpus.get(device.uuid, 0) if on_gpus is not None else None))
        for mig in pin.migs:
            uses.append(GpuUse(f"{mig.parent_index}:{mig.index}", mig.uuid, "MIG",
                               on_gpus.get(mig.uuid, 0) if on_gpus is not None else None))
        if not pin.checked:  # no NVML: the pin as written
            uses += [GpuUse(part, None, None, None) for part in pin.visible.split(",") if part]
        known = {use.uuid for use in uses}
        if on_gpus:  # memory on a GPU it was not pinned to (no pin at all, say): shown all the same
            uses += [GpuUse(None, uuid, None, used) for uuid, used in sorted(on_gpus.items()) if uuid not in known]
    histogram = stats.start_to_ready
    return BackendView(
        id=backend.id, title=backend.title, type=backend.type_id, enabled=backend.enabled,
        status=machine.status, status_message=machine.message, pid=pid, port=machine.port,
        starts=machine.starts, restarts=machine.restarts,
        exit_code=last_exit.code if last_exit is not None else None,
        exit_signal=last_exit.signal if last_exit is not None else None,
        exit_text=last_exit.describe() if last_exit is not None else None,
        exit_time=stats.exit_time, exit_cause=stats.exit_cause, ready_since=stats.ready_since,
        ready_counts=tuple(histogram.counts), ready_sum=histogram.total,
        lines_in=ring.lines_in, bytes_in=ring.bytes_in, free_ok=stats.free_ok, free_failed=stats.free_failed,
        gpus=tuple(uses), gpu_memory=sum(on_gpus.values()) if on_gpus is not None else None)


class SnapshotCollector:
    """A prometheus_client collector over one `Snapshot` (built per scrape, rendered in a worker thread)."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield from _backend_families(snap.backends)
        yield from _gpu_families(snap.gpus)
        yield from _daemon_families(snap)


def _labels(view: BackendView) -> list[str]:
    return [str(view.id), view.title, view.type]


def _backend_families(views: Iterable[BackendView]) -> Iterator[Metric]:
    def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=[*BACKEND_LABELS, *extra])

    def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=[*BACKEND_LABELS, *extra])

    status = gauge("swarmd_backend_status", "1 for the backend's current status, 0 for the others "
                   "(running, loading, waiting, idle, errored, disabled)", ("status",))
    enabled = gauge("swarmd_backend_enabled", "1 when the backend is enabled in the backends file")
    up = gauge("swarmd_backend_up", "1 when the backend is ready (status running), else 0")
    ready_since = gauge("swarmd_backend_ready_since_seconds",
                        "Unix time at which the backend last became ready (only while it is running)")
    starts = counter("swarmd_backend_starts", "Processes started for the backend")
    restarts = counter("swarmd_backend_restarts", "Automatic restarts of the backend by its restart policy")
    exit_code = gauge("swarmd_backend_last_exit_code",
                      "Exit status of the backend's last process (only when it exited by itself)")
    exit_signal = gauge("swarmd_backend_last_exit_signal",
                        "Number of the signal that ended the backend's last process (only when one did)")
    ready = HistogramMetricFamily("swarmd_backend_start_to_ready_seconds",
                                  "Seconds from a process's start to its readiness", labels=list(BACKEND_LABELS))
    lines = counter("swarmd_backend_output_lines", "Lines taken into the backend's log: its stdout and stderr "
                    "(and swarmd's few notes about it: a failed start, an unexpected exit)")
    size = counter("swarmd_backend_output_bytes", "Bytes (UTF-8) of the lines taken into the backend's log")
    free = counter("swarmd_backend_free_memory_calls", "FreeBackendMemory calls that reached the backend, by "
                   "result (ok: it answered success)", ("result",))
    memory = gauge("swarmd_backend_gpu_memory_bytes",
                   "GPU memory held by the backend's process group, by GPU (with NVML)", ("gpu_uuid",))
    for view in views:
        labels = _labels(view)
        shown = STATUSES if view.status in STATUSES else (*STATUSES, view.status)
        for name in shown:
            status.add_metric([*labels, name], 1.0 if view.status == name else 0.0)
        enabled.add_metric(labels, 1.0 if view.enabled else 0.0)
        up.add_metric(labels, 1.0 if view.status == "running" else 0.0)
        if view.ready_since is not None and view.status == "running":
            ready_since.add_metric(labels, view.ready_since)
        starts.add_metric(labels, view.starts)
        restarts.add_metric(labels, view.restarts)
        if view.exit_code is not None:
            exit_code.add_metric(labels, view.exit_code)
        if view.exit_signal is not None:
            exit_signal.add_metric(labels, view.exit_signal)
        ready.add_metric(labels, buckets=cumulative(view.ready_counts), sum_value=view.ready_sum)
        lines.add_metric(labels, view.lines_in)
        size.add_metric(labels, view.bytes_in)
        free.add_metric([*labels, "ok"], view.free_ok)
        free.add_metric([*labels, "failed"], view.free_failed)
        for use in view.gpus:
            if use.uuid is not None and use.memory_used is not None:
                memory.add_metric([*labels, use.uuid], use.memory_used)
    yield from (status, enabled, up, ready_since, starts, restarts, exit_code, exit_signal, ready, lines, size,
                free, memory)


def _gpu_families(gpus: Iterable[gpu.GPU]) -> Iterator[Metric]:
    used = GaugeMetricFamily("swarmd_gpu_memory_used_bytes", "GPU memory in use (all processes)",
                             labels=list(GPU_LABELS))
    total = GaugeMetricFamily("swarmd_gpu_memory_total_bytes", "GPU memory in all", labels=list(GPU_LABELS))
    busy = GaugeMetricFamily("swarmd_gpu_utilization_ratio",
                             "Share of the last sample period the GPU was busy, 0 to 1", labels=list(GPU_LABELS))
    heat = GaugeMetricFamily("swarmd_gpu_temperature_celsius", "GPU core temperature", labels=list(GPU_LABELS))
    for device in gpus:
        labels = [str(device.index), device.uuid, device.name]
        used.add_metric(labels, device.memory_used)
        total.add_metric(labels, device.memory_total)
        busy.add_metric(labels, device.utilization_gpu / 100.0)
        heat.add_metric(labels, device.temperature)
    yield from (used, total, busy, heat)


def _daemon_families(snap: Snapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily("swarmd_build_info", "swarmd's version (always 1)", labels=["version"])
    info.add_metric([swarmd.__version__], 1.0)
    yield info
    backends = GaugeMetricFamily("swarmd_backends", "Backends by status", labels=["status"])
    for name in sorted(set(STATUSES) | set(snap.counts)):
        backends.add_metric([name], snap.counts.get(name, 0))
    yield backends
    yield GaugeMetricFamily("swarmd_gpu_nvml_available", "1 when NVML answers (an NVIDIA driver is loaded)",
                            value=1.0 if snap.gpu_available else 0.0)
    yield GaugeMetricFamily("swarmd_backends_file_valid",
                            "1 while the backends file on disk is valid, 0 while it has a problem "
                            "(the last good fleet keeps running)", value=0.0 if snap.file_problem else 1.0)
    yield CounterMetricFamily("swarmd_reloads", "Versions of the backends file read from disk and applied",
                              value=snap.reloads)
    yield CounterMetricFamily("swarmd_reloads_failed", "Changed backends files that could not be applied "
                              "(invalid or unreadable)", value=snap.reloads_failed)
    yield CounterMetricFamily("swarmd_file_writes", "Writes of the backends file by API mutations",
                              value=snap.file_writes)
    yield CounterMetricFamily("swarmd_mutations_refused", "API mutations refused (invalid request or file, "
                              "lock timeout, failed write, daemon stopping)", value=snap.mutations_refused)
    api = CounterMetricFamily("swarmd_api_requests", "Requests on the API's unix socket by route and result "
                              "(ok, error: a handler's error answer, else the error_id or http_<status>)",
                              labels=["route", "result"])
    for (route, result), count in sorted(snap.api_requests):
        api.add_metric([route, result], count)
    yield api
    http = CounterMetricFamily("swarmd_http_requests", "Requests on the read-only HTTP listener by path and "
                               "status code", labels=["path", "code"])
    for (path, code), count in sorted(snap.http_requests):
        http.add_metric([path, code], count)
    yield http


class Metrics:
    """The daemon's metrics: the API's request counts and the renderer of `/metrics`. One per daemon, shared
    by the unix socket's app and the HTTP listener."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.api = RequestCounts()
        self.http = RequestCounts()
        # Built once (each reads a few constants at creation), rendered into each scrape's registry.
        self._process = ProcessCollector(registry=None)
        self._platform = PlatformCollector(registry=None)

    async def snapshot(self) -> Snapshot:
        """GPU figures refreshed (NVML in a worker thread, at most every half second), then the fleet as it
        is now."""
        await gpu.refresh()
        return take_snapshot(self.fleet, self.api, self.http)

    async def render(self) -> bytes:
        """The text exposition of every metric (prometheus_client's `generate_latest`), built in a worker
        thread from a snapshot taken on the loop. Raises nothing the loop must handle; cancellation abandons
        the thread."""
        snap = await self.snapshot()
        return await trio.to_thread.run_sync(self.exposition, snap, abandon_on_cancel=True)

    def exposition(self, snap: Snapshot) -> bytes:
        """`render`'s blocking part: the exposition of `snap` and the process's own figures."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(snap))
        registry.register(self._process)
        registry.register(self._platform)
        return generate_latest(registry)


def route_label(path: str, routes: dict[str, Any]) -> str:
    """The `route` label of an API request: the route's own name for a known `/API/<name>` (matched as the
    API matches it), else "unknown" -- a client cannot make new series by inventing paths."""
    if path.startswith("/API/"):
        name = path[5:]
        found = routes.get(name.lower()) if "/" not in name else None
        if found is not None:
            return str(found.name)
    return "unknown"


def result_label(result: str | None, status: int) -> str:
    """The `result` label: "ok", "error", a known error_id, else `http_<status>`."""
    if result in ("ok", "error") or result in API_RESULTS:
        return str(result)
    return f"http_{status}"
